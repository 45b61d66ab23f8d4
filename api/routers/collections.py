"""Collections, their documents and indexing jobs."""
from __future__ import annotations

from fastapi import APIRouter, Depends, File, HTTPException, Query, UploadFile, status
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError

from api.dependencies import get_principal, get_state, require_writer
from api.errors import describe
from api.ingest import UploadRejected, checked_documents, read_uploads
from api.keys import Principal
from api.schemas import CollectionCreate, DocumentBatch, JobOut
from api.state import Job, ServiceState
from indexes.collection import CollectionBroken, CollectionExists, CollectionNotFound
from indexes.config import BM25Config, ChunkingConfig, CollectionConfig, EmbedderConfig
from indexes.documents import SourceDocument
from rag import llm

router = APIRouter(prefix="/v1", tags=["collections"])


def _open(state: ServiceState, name: str):
    try:
        return state.collection(name)
    except CollectionNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None


def _writable(state: ServiceState, name: str, principal: Principal):
    collection = _open(state, name)
    if not principal.can_write(collection.config.owner):
        raise HTTPException(status.HTTP_403_FORBIDDEN,
                            f"key role {principal.role!r} cannot change collection {name!r} "
                            f"(owner: {collection.config.owner or 'admins only'})")
    return collection


@router.get("/collections")
def list_collections(state: ServiceState = Depends(get_state), _: Principal = Depends(get_principal)) -> list[dict]:
    return [state.home.describe(name) for name in state.home.names()]


@router.post("/collections", status_code=status.HTTP_201_CREATED)
def create_collection(body: CollectionCreate, state: ServiceState = Depends(get_state),
                      principal: Principal = Depends(require_writer)) -> dict:
    owner = body.owner if principal.is_admin else principal.team
    if not principal.is_admin and body.owner not in (None, principal.team):
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"a {principal.role!r} key can only create its own team's collections")
    try:  # a collection's default model (a cascade included) is checked like a request's
        for model in filter(None, (body.default_llm, *body.llm_fallbacks)):
            llm.check_model(model)
    except llm.LLMModelError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    try:
        chunking = {k: v for k, v in {"size": body.chunk_size, "overlap": body.chunk_overlap}.items() if v is not None}
        config = CollectionConfig(name=body.name, owner=owner, default_llm=body.default_llm,
                                  llm_fallbacks=body.llm_fallbacks, llm_timeout_s=body.llm_timeout_s,
                                  chunking=ChunkingConfig(**chunking),
                                  embedder=EmbedderConfig(**({"model": body.embedder} if body.embedder else {})),
                                  bm25=BM25Config(**({"language": body.language} if body.language else {})))
        return state.home.create(config).stats()
    except ValidationError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, describe(exc)) from None
    except CollectionExists as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None


@router.get("/collections/{name}")
def get_collection(name: str, state: ServiceState = Depends(get_state), _: Principal = Depends(get_principal)) -> dict:
    return _open(state, name).stats()


@router.delete("/collections/{name}")
async def delete_collection(name: str, state: ServiceState = Depends(get_state),
                            principal: Principal = Depends(get_principal)) -> dict:
    try:
        _writable(state, name, principal)
    except CollectionBroken:  # its config cannot be read, so its owner is unknown: admins may still drop it
        if not principal.is_admin:
            raise HTTPException(status.HTTP_403_FORBIDDEN,
                                f"collection {name!r} is broken; only an admin key can drop it") from None
    await run_in_threadpool(state.home.delete, name)
    state.forget(name)
    return {"deleted": name}


@router.post("/collections/{name}/documents", status_code=status.HTTP_202_ACCEPTED)
def add_documents(name: str, batch: DocumentBatch, state: ServiceState = Depends(get_state),
                  principal: Principal = Depends(get_principal)) -> JobOut:
    collection = _writable(state, name, principal)
    collection.check_ingest()  # EmbedderChanged: a 409 now, rather than a failed job later
    records = [d.model_dump(by_alias=True) for d in batch.documents]
    documents, rejected = checked_documents(records, collection.config.max_document_bytes)
    if rejected:  # a JSON batch is all or nothing: the client fixes it and sends it again
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            {"message": f"{len(rejected)} document(s) rejected; nothing was stored",
                             "rejected": rejected})
    return _job(state.submit(name, "add", lambda: _upsert(collection, documents, []), owner=principal))


@router.post("/collections/{name}/files", status_code=status.HTTP_202_ACCEPTED)
def upload_files(name: str, files: list[UploadFile] = File(...), state: ServiceState = Depends(get_state),
                 principal: Principal = Depends(get_principal)) -> JobOut:
    collection = _writable(state, name, principal)
    collection.check_ingest()
    try:
        documents, rejected = read_uploads(files, collection.config.max_document_bytes)
    except UploadRejected as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    if not documents:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, {"message": "no file could be read", "rejected": rejected})
    return _job(state.submit(name, "upload", lambda: _upsert(collection, documents, rejected), owner=principal))


@router.delete("/collections/{name}/documents")
async def delete_document_by_query(name: str, doc_id: str = Query(..., alias="id", min_length=1),
                                   state: ServiceState = Depends(get_state),
                                   principal: Principal = Depends(get_principal)) -> dict:
    """`?id=...` reaches any id, including ones a path cannot carry (newlines, a trailing slash)."""
    return await delete_document(name, doc_id, state, principal)


@router.delete("/collections/{name}/documents/{doc_id:path}")
async def delete_document(name: str, doc_id: str, state: ServiceState = Depends(get_state),
                          principal: Principal = Depends(get_principal)) -> dict:
    collection = _writable(state, name, principal)

    def work() -> bool:
        with collection.writer() as writer:
            found = writer.delete(doc_id)
            writer.commit()
            return found

    if not await run_in_threadpool(work):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no document {doc_id!r} in collection {name!r}")
    return {"deleted": doc_id}


@router.get("/jobs/{job_id}")
def get_job(job_id: str, state: ServiceState = Depends(get_state), principal: Principal = Depends(get_principal)) -> JobOut:
    job = state.jobs.get(job_id)
    if job is None or not (principal.is_admin or job.owner == principal.identity):  # others' jobs do not exist
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id!r} (jobs are kept until the server restarts)")
    return _job(job)


def _upsert(collection, documents: list[SourceDocument], rejected: list[dict]) -> dict:
    with collection.writer() as writer:
        for document in documents:
            writer.upsert(document)
        writer.commit()
        report = writer.report
    return {"added": report.added, "updated": report.updated, "unchanged": report.unchanged,
            "chunks_written": report.chunks_written, "generation": report.generation, "rejected": rejected}


def _job(job: Job) -> JobOut:
    return JobOut(id=job.id, collection=job.collection, kind=job.kind, status=job.status, result=job.result,
                  error=job.error)

