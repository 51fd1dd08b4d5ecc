"""The `aeflow index` folder as the service sees it: reloaded when index.json is committed anew, searched by vector."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from pipeline.embeddings import EmbeddingsError


class LiveIndex:
    """The committed FAISS index of OUT_DIR/index and its id table; re-read when index.json changes (every poll_s).

    Scores follow pipeline.search.search: cosine for an "ip" index, negative L2 distance for an "l2" one.
    """

    def __init__(self, out_dir: str | Path, poll_s: float = 2.0):
        self.out = Path(out_dir)
        self.poll_s = poll_s
        self._lock = threading.Lock()
        self._stamp = None
        self.checked = 0.0
        self._load()

    def _load(self) -> None:
        import logging

        import pyarrow.parquet as pq

        from pipeline.index import load_meta

        logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its AVX probing chatter
        import faiss

        for attempt in range(3):  # a builder may swap versions between reading index.json and its files
            meta = load_meta(self.out)
            if meta is None:
                raise EmbeddingsError(f"no index in {self.out / 'index'}: run `aeflow index {self.out}` first")
            try:
                folder = self.out / "index"
                index = faiss.read_index(str(folder / meta["files"]["index"]))
                if meta["kind"] == "ivf":
                    index.nprobe = int(meta["nprobe"])
                ids = pq.read_table(folder / meta["files"]["ids"], columns=["id", "path"])
                break
            except (FileNotFoundError, RuntimeError, OSError):
                if attempt == 2:
                    raise
                time.sleep(0.1)
        self.meta, self.faiss_index = meta, index
        self.ids = ids.column("id").to_numpy()
        self.paths = ids.column("path").to_pylist()
        self._stamp = self._index_stamp()

    def _index_stamp(self):
        st = (self.out / "index" / "index.json").stat()
        return st.st_mtime_ns, st.st_size

    @property
    def model(self) -> str:
        """`name:version` of the model whose vectors the index holds (queries must use the same)."""
        return self.meta["model"]

    def refresh(self) -> str:
        """Reload if index.json changed (checked at most every poll_s); returns the index's model."""
        now = time.monotonic()
        if now - self.checked >= self.poll_s:
            with self._lock:
                if now - self.checked >= self.poll_s:
                    self.checked = now
                    try:
                        if self._index_stamp() != self._stamp:
                            self._load()
                    except OSError:
                        pass  # mid-swap or removed: keep answering from the loaded version
        return self.model

    def describe(self) -> dict:
        """Index facts for /models."""
        m = self.meta
        return {"dir": str(self.out), "model": m["model"], "kind": m["kind"], "metric": m["metric"],
                "count": m["count"], "dim": m["dim"], "updated_at": m.get("updated_at")}

    def search(self, vector: np.ndarray, model: str, k: int) -> list[dict]:
        """[{rank, path, score}] of the k nearest indexed images to an embedding of `model`, best first."""
        m = self.meta
        if model != m["model"]:
            raise EmbeddingsError(f"the index holds vectors of {m['model']}, the query was embedded by {model}")
        q = np.ascontiguousarray(np.asarray(vector, dtype=np.float32)[None])
        if q.shape[1] != m["dim"]:
            raise EmbeddingsError(f"query vector has {q.shape[1]} dimensions, the index {m['dim']}")
        if m["metric"] == "ip":
            q = q / max(float(np.linalg.norm(q)), 1e-12)
        n = int(self.faiss_index.ntotal)
        dist, idx = self.faiss_index.search(q, min(int(k), n) or 1)
        out = []
        for d, i in zip(dist[0], idx[0]):
            if i < 0:
                continue
            j = int(np.searchsorted(self.ids, i))
            score = float(d) if m["metric"] == "ip" else -float(np.sqrt(max(float(d), 0.0)))
            out.append({"rank": len(out) + 1, "path": self.paths[j], "score": score})
        return out
