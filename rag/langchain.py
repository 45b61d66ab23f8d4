"""LangChain-core adapter: a Mighty collection as a `BaseRetriever` returning `Document`s."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, PrivateAttr

from indexes.collection import Collection, Home
from rag.retriever import Retriever
from rag.schemas import Filters, Mode, RetrievalRequest


class MightyRetriever(BaseRetriever):
    """Each `Document` carries the citation fields (id, chunk, span, score, found_by) in metadata."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    collection: Collection
    mode: Mode = "hybrid"
    top_k: int = 5
    filters: Filters | None = None
    fusion: str | None = None
    dense_weight: float | None = None
    _retriever: Retriever | None = PrivateAttr(None)

    @classmethod
    def from_home(cls, home: Path | str, collection: str, **options: Any) -> "MightyRetriever":
        """The retriever of a named collection; the name goes through `Home.open`, which enforces the rule."""
        return cls(collection=Home(Path(home)).open(collection), **options)

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun,
                                **kwargs: Any) -> list[Document]:
        request = RetrievalRequest(query=query, mode=self.mode, top_k=self.top_k, filters=self.filters,
                                   fusion=self.fusion, dense_weight=self.dense_weight)
        if self._retriever is None:
            self._retriever = Retriever(self.collection)
        result = self._retriever.search(request)
        return [Document(page_content=hit.text, id=f"{hit.id}#{hit.chunk}",
                         metadata={**hit.metadata, "id": hit.id, "chunk": hit.chunk, "title": hit.title,
                                   "span": list(hit.span), "score": hit.score, "collection": result.collection,
                                   "generation": result.generation,
                                   "found_by": {k: v.model_dump() for k, v in hit.found_by.items()}})
                for hit in result.hits]
