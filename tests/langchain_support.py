"""LangChain test support shared by the quality and judge tests."""

from __future__ import annotations

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever


class KeywordRetriever(BaseRetriever):
    """A real LangChain retriever: documents sharing a word of four letters or more."""

    docs: list[str]

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        words = {w.strip("?.,").lower() for w in query.split() if len(w) >= 4}
        return [
            Document(page_content=d)
            for d in self.docs
            if words & {w.strip(".,").lower() for w in d.split()}
        ]
