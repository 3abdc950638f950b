"""Quality analysis of model answers: refusals, hedging, sentiment, groundedness.

`analyze_response(response, query=None)` is the public entry point; `QualityHook` runs it
over every model answer of a finished trace and stores one `quality` row per answer.
"""

from __future__ import annotations

import functools
import json
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .refusal import RefusalResult, detect_refusal
from .store.rows import iso_time

if TYPE_CHECKING:
    from .hooks import Store
    from .views import Trace

ANALYZER_VERSION = "1"
_FLAGS = re.IGNORECASE

# First-person or explicit uncertainty: one is enough.
# Patterns run on lower-cased text with straight apostrophes (no IGNORECASE: much faster).
# First-person or explicit uncertainty: one is enough.
_STRONG_HEDGES = re.compile(
    r"\bi(?:'m| am) not (?:entirely |completely |totally |100% |quite )?(?:sure|certain|"
    r"positive)\b|\bi (?:could|may|might) be (?:wrong|mistaken)\b|"
    r"\b(?:to the best of|as far as) (?:my knowledge|i know|i can tell|i'm aware)\b|"
    r"\bif i (?:recall|remember) (?:correctly|rightly)\b|\bdon'?t quote me\b|"
    r"\bi(?:'m| am) not an expert\b|\btake this with a grain of salt\b|"
    r"\bi (?:can't|cannot) be (?:sure|certain)\b|\bi(?:'m| am) (?:guessing|unsure)\b|"
    r"\bmy best guess\b|\bi (?:can't|cannot|don't|do not) (?:verify|confirm)\b|"
    r"\bit(?:'s| is) (?:hard|difficult) to say\b"
)
# Softer markers: two or more make a hedge.
_WEAK_FIRST_PERSON = re.compile(
    r"\bi (?:think|believe|suspect|guess|suppose|assume|imagine)\b(?! of\b| about\b| so\b)"
)
_WEAK_HEDGES = re.compile(
    r"\b(?:probably|perhaps|possibly|presumably|conceivably|arguably|seemingly|apparently|"
    r"likely|maybe)\b|\bit (?:seems|appears|may be|might be|could be)\b|\bi would (?:say|"
    r"guess|think)\b|\bnot (?:entirely|completely) clear\b"
)
_CLAUSE_START = re.compile(r"(?:^|[.!?,;:]|\bbut|\band|\bso)\s*$")
_QUESTION = re.compile(r"[^.!?\n]*\?")
# Every hedge contains one of these: answers without any skip the patterns.
_HEDGE_WORDS = (
    "sure", "certain", "positive", "wrong", "mistaken", "knowledge", "know", "tell", "aware",
    "recall", "remember", "quote", "expert", "grain of salt", "guess", "verify", "confirm",
    "hard to say", "difficult to say", "unsure", "think", "believe", "suspect", "suppose",
    "assume", "imagine", "probabl", "perhaps", "possibl", "presumabl", "conceivabl", "arguabl",
    "seemingl", "apparentl", "likely", "maybe", "seems", "appears", "may be", "might be",
    "could be", "would say", "not entirely", "not completely",
)
_WORD = re.compile(r"[a-z0-9]+(?:['’][a-z]+)?")
_SENTENCES = re.compile(r"[^.!?\n]+[.!?]*")
_STOPWORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for from
    further had has have having he her here hers herself him himself his how i if in into is it
    its itself just me more most my myself no nor not now of off on once only or other our ours
    out over own same she should so some such than that the their theirs them themselves then
    there these they this those through to too under until up very was we were what when where
    which while who whom why will with would you your yours yourself also may might must shall
    yes one two many much well like get got make made use used using based according""".split()
)


@dataclass(frozen=True, slots=True)
class QualityResult:
    """What `analyze_response` found in one answer."""

    has_refusal: bool
    has_hedging: bool
    sentiment_score: float | None
    response_length: int
    refusal: RefusalResult
    hedging_evidence: list[str] = field(default_factory=list)

    @property
    def refusal_evidence(self) -> str | None:
        """The text that marked the refusal."""
        return self.refusal.evidence

    def to_dict(self) -> dict[str, Any]:
        """Plain values, for JSON."""
        return {
            "has_refusal": self.has_refusal,
            "refusal_kind": self.refusal.kind,
            "refusal_evidence": self.refusal.evidence,
            "has_hedging": self.has_hedging,
            "hedging_evidence": list(self.hedging_evidence),
            "sentiment_score": self.sentiment_score,
            "response_length": self.response_length,
        }


def detect_hedging(response: str) -> list[str]:
    """Hedging phrases in `response`; empty unless one strong or two weak markers occur.

    Questions are skipped ("Do you think ...?"), so asking is not hedging.
    """
    original = response[:8000]
    text = original.lower().replace("’", "'")
    if not any(word in text for word in _HEDGE_WORDS):
        return []
    if "?" in text:
        text = _QUESTION.sub(lambda m: " " * len(m.group(0)), text)
    same = len(text) == len(original)

    def evidence(match: re.Match[str]) -> str:
        return original[match.start(): match.end()] if same else match.group(0)

    strong = [evidence(m) for m in _STRONG_HEDGES.finditer(text)]
    weak = [
        evidence(m) for m in _WEAK_FIRST_PERSON.finditer(text)
        if _CLAUSE_START.search(text, max(0, m.start() - 6), m.start())
    ]
    weak += [evidence(m) for m in _WEAK_HEDGES.finditer(text)]
    if strong or len(weak) >= 2:
        return strong + weak
    return []


@functools.lru_cache(maxsize=1)
def _vader() -> Any:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


# VADER's cost grows with the square of a text's length (20,000 characters take about 0.4 s on
# the hook thread, holding the GIL the app needs): it reads chunks of whole sentences, and the
# opening of a long answer.
_SENTIMENT_CHUNK = 400
_SENTIMENT_CHARS = 2_000


def sentiment(response: str) -> float | None:
    """VADER's compound score in [-1, 1]; None for an empty answer.

    An answer of up to 400 characters is scored whole. A longer one is scored in chunks of
    whole sentences over its first 2,000 characters, and the chunks' compound scores are
    averaged by length.
    """
    if not response.strip():
        return None
    vader = _vader()
    if len(response) <= _SENTIMENT_CHUNK:
        return float(vader.polarity_scores(response)["compound"])
    chunks: list[str] = []
    current = ""
    for sentence in _SENTENCES.findall(response[:_SENTIMENT_CHARS]):
        if current and len(current) + len(sentence) > _SENTIMENT_CHUNK:
            chunks.append(current)
            current = ""
        current += sentence[:_SENTIMENT_CHUNK]
    if current.strip():
        chunks.append(current)
    scored = [(len(c), vader.polarity_scores(c)["compound"]) for c in chunks if c.strip()]
    total = sum(n for n, _ in scored)
    return float(sum(n * v for n, v in scored) / total) if total else None


def analyze_response(response: str | None, query: str | None = None) -> QualityResult:
    """Refusal, hedging, sentiment and length of one model answer.

    Args:
        response: the answer text.
        query: the question asked, when known (it sharpens refusal detection).
    """
    text = response or ""
    refusal = detect_refusal(text, query)
    hedges = detect_hedging(text)
    return QualityResult(
        has_refusal=refusal.is_refusal,
        has_hedging=bool(hedges),
        sentiment_score=sentiment(text),
        response_length=len(text),
        refusal=refusal,
        hedging_evidence=hedges,
    )


@functools.lru_cache(maxsize=65_536)
def _stem(word: str) -> str:
    for suffix in ("ingly", "edly", "ing", "ies", "ied", "es", "ed", "ly", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def _content_words(text: str) -> frozenset[str]:
    return frozenset(
        _stem(w) for w in _WORD.findall(text.lower()) if w not in _STOPWORDS and len(w) > 1
    )


# A RAG app retrieves the same chunks again and again: the words of a chunk of ordinary size
# are read once (a few MB at most are kept).
_cached_words = functools.lru_cache(maxsize=512)(_content_words)


def _document_words(text: str) -> frozenset[str]:
    return _cached_words(text) if len(text) <= 4_000 else _content_words(text)


def groundedness(
    answer: str, documents: list[str], *, threshold: float = 0.6
) -> tuple[float | None, list[str]]:
    """Share of the answer's sentences whose content words the documents contain.

    A sentence counts as supported when at least `threshold` of its content words (lower-cased,
    crudely stemmed, stop words removed) occur in the documents. Sentences with fewer than three
    content words are not judged.

    Returns:
        ``(score, unsupported_sentences)``; the score is None when nothing could be judged.
    """
    if not documents or not answer.strip():
        return None, []
    vocabulary: set[str] = set()
    for doc in documents:
        vocabulary |= _document_words(doc)
    judged = 0
    supported = 0
    unsupported: list[str] = []
    for sentence in _SENTENCES.findall(answer):
        words = _content_words(sentence)
        if len(words) < 3:
            continue
        judged += 1
        if len(words & vocabulary) / len(words) >= threshold:
            supported += 1
        else:
            unsupported.append(sentence.strip())
    if not judged:
        return None, []
    return supported / judged, unsupported


def _text_of(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        if value and all(isinstance(v, dict) and v.get("type") == "text" for v in value):
            return "".join(str(v.get("text", "")) for v in value)
        for item in value:
            text = _text_of(item)
            if text:
                return text
        return None
    if isinstance(value, dict):
        for key in ("content", "text", "message", "response", "completion", "output", "answer"):
            if key in value:
                text = _text_of(value[key])
                if text:
                    return text
    return None


def answer_text(outputs: Any) -> str | None:
    """The answer text in a stored llm span's outputs."""
    return _text_of(outputs)


def question_text(inputs: Any) -> str | None:
    """The last user message in a stored llm span's inputs."""
    if isinstance(inputs, str):
        return inputs
    if isinstance(inputs, list):
        messages = inputs[-1] if inputs and isinstance(inputs[-1], list) else inputs
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") in ("user", "human"):
                return _text_of(message.get("content"))
        return _text_of(messages[-1]) if messages else None
    if isinstance(inputs, dict):
        for key in ("messages", "prompt", "query_str", "question", "input", "formatted_prompt"):
            if key in inputs:
                return question_text(inputs[key])
    return None


def retrieved_documents(trace: Trace) -> list[str]:
    """Texts of the documents retrieved anywhere in the trace."""
    texts: list[str] = []
    for span in trace.spans:
        if span.kind != "retriever":
            continue  # before `outputs`, which decodes the span's stored JSON
        outputs = span.outputs
        if isinstance(outputs, dict):
            outputs = outputs.get("nodes") or outputs.get("documents")
        if not isinstance(outputs, list):
            continue
        for doc in outputs:
            if isinstance(doc, dict):
                text = doc.get("content") or doc.get("text")
                if isinstance(text, str):
                    texts.append(text)
            elif isinstance(doc, str):
                texts.append(doc)
    return texts


_QUALITY_SQL = (
    "INSERT OR REPLACE INTO quality (span_id, trace_id, has_refusal, refusal_kind, "
    "refusal_evidence, has_hedging, hedging_evidence, sentiment_score, response_length, "
    "groundedness, unsupported_sentences, analyzed_at, analyzer_version) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


class QualityHook:
    """Post-run hook: a `quality` row for every successful model answer in the trace."""

    name = "quality"
    portable = True  # may run in the hook process: it needs only the trace and the store

    def __call__(self, trace: Trace, store: Store) -> int:
        """Analyse and store; returns how many answers were analysed."""
        documents = retrieved_documents(trace)
        now = iso_time(time.time_ns())
        rows = []
        for span in trace.spans:
            if span.kind != "llm" or span.status != "ok" or not span.counts_usage:
                continue
            answer = answer_text(span.outputs)
            if answer is None:
                continue
            result = analyze_response(answer, question_text(span.inputs))
            score, unsupported = groundedness(answer, documents)
            rows.append(
                (
                    span.span_id, span.trace_id, int(result.has_refusal), result.refusal.kind,
                    result.refusal.evidence, int(result.has_hedging),
                    json.dumps(result.hedging_evidence), result.sentiment_score,
                    result.response_length, score,
                    json.dumps(unsupported) if score is not None else None, now,
                    ANALYZER_VERSION,
                )
            )
        store.write(_QUALITY_SQL, rows)
        return len(rows)
