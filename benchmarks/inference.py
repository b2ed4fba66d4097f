"""Inference speed on CPU: PyTorch eager, TorchScript, ONNX Runtime, and the HTTP service.

    python benchmarks/inference.py [--seconds 3] [--threads 1 2] [--concurrency 32] [--out FILE.json]

Benchmarks the paper network (1.78 M parameters) with random weights: speed does not depend on
the weights, so no training is needed. The checkpoint is written in cifarlab's own format into
a temporary folder and exported with `cifarlab.export` like any run.

- latency: one image per call (batch 1), median and 90th percentile over `--seconds`,
  for each CPU thread count in `--threads` (default 1 and all cores);
- throughput: images per second in batches of `--batch` (default 256);
- service: `cifarlab serve` in its own process on a loopback port, `--concurrency` clients
  posting a 32x32 PNG as fast as answers come back for `--seconds`; requests per second,
  latency percentiles, errors, and how many requests each forward pass served.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from cifarlab.common.checkpoint import model_metadata
from cifarlab.common.files import atomic_torch_save
from cifarlab.data import CLASSES, MEAN, STD
from cifarlab.data.augment import normalize
from cifarlab.inference.export import export_model
from cifarlab.models import build_model, count_parameters
from cifarlab.training.presets import get_preset


def write_checkpoint(folder: Path) -> Path:
    """A paper-network checkpoint with random weights, in the format `cifarlab train` writes."""
    torch.manual_seed(0)
    config = get_preset("paper").to_dict()
    model = build_model(config["model"], **config["model_options"]).eval()
    path = folder / "checkpoint.pt"
    atomic_torch_save(path, {"model": model.state_dict(), "config": config, "epoch": 0, "meta": model_metadata(config, CLASSES, MEAN, STD)})
    return path


def timed(fn: Callable[[], object], seconds: float) -> list[float]:
    """Seconds per call of fn, repeated for about `seconds` after a short warm-up."""
    for _ in range(3):
        fn()
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 5:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def speed(run: Callable[[np.ndarray], object], single: np.ndarray, batch: np.ndarray, seconds: float) -> dict:
    one = timed(lambda: run(single), seconds)
    many = timed(lambda: run(batch), seconds)
    return {
        "latency_ms_median": 1000 * statistics.median(one),
        "latency_ms_p90": 1000 * float(np.percentile(one, 90)),
        "latency_calls": len(one),
        "batch": len(batch),
        "throughput_images_per_s": len(batch) / statistics.median(many),
        "throughput_calls": len(many),
    }


def export_all(ckpt: Path, folder: Path) -> tuple[Path, Path]:
    quiet = lambda message: None  # noqa: E731
    ts_path, _ = export_model(ckpt, "torchscript", folder / "model.torchscript.pt", images=16, log=quiet)
    onnx_path, _ = export_model(ckpt, "onnx", folder / "model.onnx", images=16, log=quiet)
    return ts_path, onnx_path


def engines(ckpt: Path, ts_path: Path, onnx_path: Path, threads: int) -> dict[str, Callable[[np.ndarray], object]]:
    """The three ways to run the model, each on `threads` CPU threads."""
    import warnings

    import onnxruntime as ort

    from cifarlab.inference.model import Predictor

    torch.set_num_threads(threads)
    model = Predictor(ckpt).model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.load(str(ts_path)).eval()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])

    def eager(x):
        with torch.inference_mode():
            return model(torch.from_numpy(x))

    def torchscript(x):
        with torch.inference_mode():
            return scripted(torch.from_numpy(x))

    return {
        "pytorch_eager": eager,
        "torchscript": torchscript,
        "onnxruntime": lambda x: session.run(["logits"], {"images": x})[0],
    }


# ---------------------------------------------------------------- the service


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png(image: torch.Tensor) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
    return buffer.getvalue()


async def load(url: str, body: bytes, concurrency: int, seconds: float) -> dict:
    import httpx

    latencies: list[float] = []
    errors = 0
    end = time.perf_counter() + seconds

    async def client_loop(client):
        nonlocal errors
        while time.perf_counter() < end:
            start = time.perf_counter()
            response = await client.post("/predict", files={"file": ("img.png", body, "image/png")})
            latencies.append(time.perf_counter() - start)
            errors += response.status_code != 200

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        for _ in range(3):  # warm-up
            await client.post("/predict", files={"file": ("img.png", body, "image/png")})
        started = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {
        "concurrency": concurrency,
        "seconds": elapsed,
        "requests": len(latencies),
        "errors": errors,
        "requests_per_s": len(latencies) / elapsed,
        "latency_ms_median": 1000 * statistics.median(latencies),
        "latency_ms_p95": 1000 * float(np.percentile(latencies, 95)),
    }


def service(ckpt: Path, concurrency: int, seconds: float) -> dict:
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [sys.executable, "-m", "cifarlab", "serve", str(ckpt), "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"server did not start: {process.stderr.read().decode()[-2000:]}") from None
                time.sleep(0.25)
        body = png(torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)))
        before = httpx.get(f"{url}/health").json()
        result = asyncio.run(load(url, body, concurrency, seconds))
        after = httpx.get(f"{url}/health").json()
        batches = after["batches"] - before["batches"]
        result["forward_passes"] = batches
        result["mean_requests_per_forward_pass"] = (after["requests"] - before["requests"]) / max(1, batches)
        result["largest_batch"] = after["largest_batch"]
        return result
    finally:
        process.terminate()
        process.wait(timeout=30)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=256, help="batch size for throughput (default: %(default)s)")
    parser.add_argument("--concurrency", type=int, default=32, help="simultaneous HTTP clients (default: %(default)s)")
    cores = len(os.sched_getaffinity(0))
    parser.add_argument(
        "--threads", type=int, nargs="+", default=sorted({1, cores}), help="CPU thread counts to measure the engines with (default: 1 and all cores)"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/inference-cpu.json"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = write_checkpoint(Path(tmp))
        generator = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (args.batch, 3, 32, 32), dtype=torch.uint8, generator=generator)
        batch = normalize(images, MEAN, STD).numpy()
        ts_path, onnx_path = export_all(ckpt, Path(tmp))
        results = {}
        for threads in args.threads:
            key = f"{threads}_threads"
            results[key] = {}
            for name, run in engines(ckpt, ts_path, onnx_path, threads).items():
                r = results[key][name] = speed(run, batch[:1].copy(), batch, args.seconds)
                print(
                    f"{threads} thread(s) {name:<14} batch 1: {r['latency_ms_median']:.2f} ms median   "
                    f"batch {args.batch}: {r['throughput_images_per_s']:,.0f} images/s",
                    flush=True,
                )
        results["service"] = service(ckpt, args.concurrency, args.seconds)
        s = results["service"]
        print(
            f"service        {s['concurrency']} clients: {s['requests_per_s']:.0f} requests/s, "
            f"median {s['latency_ms_median']:.1f} ms, p95 {s['latency_ms_p95']:.1f} ms, {s['errors']} errors, "
            f"{s['mean_requests_per_forward_pass']:.1f} requests per forward pass"
        )

    report = {
        "command": "python " + " ".join([sys.argv[0], *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "model": "paper",
        "parameters": count_parameters(build_model("paper")),
        "weights": "random (speed does not depend on them)",
        "cpu": cpu_name(),
        "cpu_cores_available": len(os.sched_getaffinity(0)),
        "service_threads": "torch's default (all cores), as `cifarlab serve` runs",
        "torch_version": torch.__version__,
        "onnxruntime_version": __import__("onnxruntime").__version__,
        "note": "shared machine: other jobs ran at the same time; the HTTP client shares the CPU with the server",
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
