"""Target samples for forward-KL training and held-out evaluation: exact samplers, or HMC
generated once and cached on disk.

A cached set, ``<cache_dir>/<name>-<key>/``, holds ``metadata.json`` (the settings, whose hash
is ``key``, the sampler's report and every chunk's SHA-256) and ``chunk_00000.pt``, …: tensors
``(n_i, *event_shape)``, together the samples in order. It is written to a temporary folder and
renamed into place, so a killed generation leaves no partial set. A set loads as one tensor.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..samplers import hmc_sample
from ..targets.base import Target
from .config import DTYPES, HMCConfig
from .distributed import stream_seed
from .files import atomic_write, read_json, unusable, write_json

Symmetry = Callable[[Tensor, torch.Generator], Tensor]
"""``(samples, generator) -> samples``: a random exact symmetry of the target applied to each
sample (e.g. a global sign flip for φ⁴), to remove the imbalance between modes that Markov
chains started at random leave behind."""


@dataclass
class TargetSamples:
    """Training and held-out target samples ``(N, *event_shape)`` on the CPU (either may be
    ``None``) and how they were made."""

    train: Tensor | None
    test: Tensor | None
    metadata: dict[str, Any]


def settings_key(settings: dict[str, Any]) -> str:
    """A short stable hash of JSON-serialisable settings (sorted keys)."""
    blob = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class SampleSetWriter:
    """Writes a sample set chunk by chunk into a temporary sibling of ``folder``, renamed into
    place by :meth:`finish` (if another process finished the same set first, its copy is kept);
    as a context manager, the temporary folder never outlives the block."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.folder.with_name(f".{self.folder.name}.tmp-{os.getpid()}")
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir()
        self.n_chunks = 0
        self.n_samples = 0
        self.sha256: list[str] = []

    def __enter__(self) -> SampleSetWriter:
        return self

    def __exit__(self, *_exc: object) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def add(self, chunk: Tensor) -> None:
        """Write the next chunk ``(n_i, *event_shape)`` (moved to the CPU), with its SHA-256."""
        data = chunk.detach().to("cpu").contiguous().clone()
        path = self.tmp / chunk_name(self.n_chunks)
        atomic_write(path, lambda f: torch.save(data, f))
        self.sha256.append(file_sha256(path))
        self.n_chunks += 1
        self.n_samples += data.shape[0]

    def finish(self, metadata: dict[str, Any]) -> Path:
        meta = dict(metadata, n_chunks=self.n_chunks, n_samples=self.n_samples, sha256=self.sha256)
        write_json(self.tmp / "metadata.json", meta)
        try:
            os.replace(self.tmp, self.folder)
        except OSError:
            if not (self.folder / "metadata.json").exists():
                raise
        return self.folder


def save_sample_set(
    folder: str | os.PathLike[str], chunks: Sequence[Tensor], metadata: dict[str, Any]
) -> Path:
    """Write ``chunks`` and ``metadata`` as a sample set at ``folder``; returns ``folder``."""
    with SampleSetWriter(folder) as writer:
        for chunk in chunks:
            writer.add(chunk)
        return writer.finish(metadata)


def chunk_name(i: int) -> str:
    return f"chunk_{i:05d}.pt"


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def load_sample_set(
    folder: str | os.PathLike[str], verify: bool = True
) -> tuple[Tensor, dict[str, Any]]:
    """Load a set written by :class:`SampleSetWriter` as one tensor ``(N, *event_shape)``, with
    ``verify`` checking every chunk's SHA-256. A damaged, truncated or missing file is an
    :func:`~.files.unusable` error saying to delete the folder (the next run regenerates it)."""
    src = Path(folder)
    todo = f"delete {src} and it will be generated again"
    metadata = read_json(src / "metadata.json", todo)
    n_chunks, sums = metadata.get("n_chunks"), metadata.get("sha256")
    if not isinstance(n_chunks, int) or not isinstance(sums, list) or len(sums) != n_chunks:
        raise unusable(src / "metadata.json", "lacks the chunk count or checksums", todo)
    chunks: list[Tensor] = []
    shape = torch.Size()
    for i in range(n_chunks):
        path = src / chunk_name(i)
        if not path.exists():
            raise unusable(path, "is missing", todo)
        if verify and file_sha256(path) != sums[i]:
            raise unusable(path, "does not match its checksum (damaged or truncated)", todo)
        try:
            t = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many types for damaged archives
            raise unusable(path, f"cannot be loaded ({type(e).__name__})", todo) from None
        if not isinstance(t, Tensor) or t.dim() < 1 or (chunks and t.shape[1:] != shape):
            raise unusable(path, "is not a tensor of samples like the others", todo)
        chunks.append(t)
        shape = t.shape[1:]
    if sum(c.shape[0] for c in chunks) != metadata.get("n_samples") or not chunks:
        raise unusable(src / "metadata.json", "disagrees with its chunks on the sample count", todo)
    return torch.cat(chunks), metadata


def exact_samples(
    target: Target, n_train: int, n_test: int, seed: int, dtype: torch.dtype
) -> TargetSamples:
    """Samples from the target's exact sampler: the training and test sets from two
    independent CPU streams seeded by ``seed``, stored in ``dtype``."""

    def draw(n: int, split: int) -> Tensor | None:
        if n == 0:
            return None
        g = torch.Generator().manual_seed(stream_seed(seed, 0, 100 + split))
        return target.sample(n, g).to(dtype)

    def info(n: int) -> dict[str, Any] | None:
        return {"n_samples": n, "seed": seed} if n else None

    meta = {
        "sampler": "exact",
        "target": type(target).__name__,
        "train": info(n_train),
        "test": info(n_test),
    }
    return TargetSamples(draw(n_train, 0), draw(n_test, 1), meta)


def hmc_settings(
    target: Target, hmc: HMCConfig, n: int, seed: int, split: str, dtype: torch.dtype, device: str
) -> dict[str, Any]:
    """The settings that identify one HMC sample set (the cache key hashes them)."""
    params = {
        k: (list(v) if isinstance(v, tuple) else v)
        for k, v in vars(target).items()
        if not k.startswith("_") and isinstance(v, (bool, int, float, str, tuple))
    }
    h = asdict(hmc)
    h.pop("chunk_size")  # how the work is split does not change the samples
    return {
        "sampler": "hmc",
        "target": type(target).__name__,
        "target_params": params,
        "hmc": h,
        "n_samples": n,
        "seed": seed,
        "split": split,
        "dtype": str(dtype).removeprefix("torch."),
        # CUDA and CPU random streams differ: the device type is part of the identity.
        "device_type": torch.device(device).type,
    }


def generate_hmc(
    target: Target,
    n: int,
    hmc: HMCConfig,
    *,
    seed: int,
    split: int,
    dtype: torch.dtype,
    device: str | torch.device,
    on_chunk: Callable[[Tensor], None],
    periodic: float | None = None,
    observable: Callable[[Tensor], Tensor] | None = None,
    symmetry: Symmetry | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Run HMC (:func:`pathgrad_ref.samplers.hmc_sample`) for ``n`` samples in chunks of about
    ``hmc.chunk_size``, each continuing the chains of the previous one (no new
    thermalisation), so that one chunk at a time is on the device; each chunk, in ``dtype`` on
    the CPU, goes to ``on_chunk``. Chains run in whole sweeps of ``hmc.n_chains``, the last cut
    to ``n`` samples. Returns a report: acceptance rate, ``τ_int`` of ``observable`` (default
    the action; mean over chunks), final step size, time."""
    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(stream_seed(seed, 0, 200 + split))
    per_chunk = max(1, hmc.chunk_size // hmc.n_chains) * hmc.n_chains
    remaining = math.ceil(n / hmc.n_chains) * hmc.n_chains
    init: Tensor | None = None
    step_size, accepted, n_traj, produced = hmc.step_size, 0.0, 0, 0
    taus: list[float] = []
    start = time.perf_counter()
    while remaining > 0:
        m = min(per_chunk, remaining)
        first = init is None
        with warnings.catch_warnings():
            # Short chunks give unreliable τ_int estimates; the report says how many chunks.
            warnings.filterwarnings("ignore", message="series of .* too short")
            res = hmc_sample(
                target, m, n_chains=hmc.n_chains, step_size=step_size,
                n_leapfrog=hmc.n_leapfrog, n_therm=hmc.n_therm if first else 0, thin=hmc.thin,
                init=init, generator=gen, dtype=DTYPES[hmc.dtype], device=device,
                periodic=periodic, adapt_step_size=hmc.adapt_step_size and first,
                target_acceptance=hmc.target_acceptance, observable=observable,
                progress=progress,
            )  # fmt: skip
        samples = res.samples if symmetry is None else symmetry(res.samples, gen)
        chunk = samples[: n - produced].to(device="cpu", dtype=dtype)
        produced += chunk.shape[0]
        on_chunk(chunk)
        accepted += res.acceptance_rate * res.n_steps
        n_traj += res.n_steps
        taus += [res.tau_int] if math.isfinite(res.tau_int) else []
        init, step_size = res.final_state, res.step_size
        remaining -= m
        del res, samples, chunk
    return {
        "acceptance_rate": accepted / n_traj,
        "tau_int": sum(taus) / len(taus) if taus else math.nan,
        "tau_int_chunks": len(taus),
        "step_size": step_size,
        "n_chains": hmc.n_chains,
        "trajectories_per_chain": n_traj + hmc.n_therm,
        "generation_time_s": time.perf_counter() - start,
        "symmetrised": symmetry is not None,
    }


def cached_hmc_samples(
    target: Target,
    n: int,
    hmc: HMCConfig,
    *,
    seed: int,
    split: str,
    dtype: torch.dtype,
    device: str | torch.device,
    cache_dir: str | os.PathLike[str],
    log: Callable[[str], None] = print,
    verify: bool = True,
    **sampler: Any,
) -> tuple[Tensor, dict[str, Any]]:
    """``n`` HMC samples of ``target`` for data split ``split`` (``"train"``/``"test"``,
    independent streams), from the cache if present, else generated by :func:`generate_hmc`
    (which takes the ``sampler`` keywords: ``periodic``, ``observable``, ``symmetry``,
    ``progress``) and cached. Returns the samples and their metadata."""
    device = torch.device(device)
    settings = hmc_settings(target, hmc, n, seed, split, dtype, str(device))
    folder = Path(cache_dir) / f"{type(target).__name__.lower()}-{split}-{settings_key(settings)}"
    if (folder / "metadata.json").exists():
        store, meta = load_sample_set(folder, verify)
        log(f"loaded {len(store)} cached {split} samples from {folder}")
        return store, meta
    log(f"generating {n} {split} samples by HMC on {device} ({hmc.n_chains} chains) ...")
    split_id = {"train": 0, "test": 1}.get(split, 2)
    with SampleSetWriter(folder) as writer:
        report = generate_hmc(
            target, n, hmc, seed=seed, split=split_id, dtype=dtype, device=device,
            on_chunk=writer.add, **sampler,
        )  # fmt: skip
        writer.finish({"settings": settings, "report": report, "torch": torch.__version__})
    store, meta = load_sample_set(folder, verify=False)
    log(
        f"  {n} samples in {report['generation_time_s']:.1f} s: acceptance "
        f"{report['acceptance_rate']:.3g}, tau_int {report['tau_int']:.3g}, step size "
        f"{report['step_size']:.3g}; cached in {folder}"
    )
    return store, meta
