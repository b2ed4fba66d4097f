"""`cifarlab serve`: a real server process on a loopback port, a real HTTP client, a headless browser."""

import concurrent.futures
import contextlib
import io
import os
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import NamedTuple

import httpx
import pytest
from PIL import Image

from cifarlab.cli import main
from cifarlab.data import load_cifar10
from cifarlab.inference.model import Predictor
from cifarlab.inference.predict import load_image
from cifarlab.serve import MAX_SERVE_PIXELS, create_app, make_server

MAX_UPLOAD = 50_000
CHROMIUM = "/usr/bin/chromium"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def images(tiny_run) -> list[bytes]:
    """Ten different test images as PNG files' bytes."""
    return [png_bytes(image) for image in load_cifar10(tiny_run.parent / "data", download=False).test_images[:10]]


@pytest.fixture(scope="module")
def expected(tiny_run, images) -> list[list[tuple[str, float]]]:
    """Every class with its probability for each image, straight from the model (no server)."""
    predictor = Predictor(tiny_run)
    logits = predictor.logits(__import__("torch").stack([load_image(data).pixels for data in images]))
    return predictor.top_k(logits, 10)


class Served(NamedTuple):
    url: str
    log: Path  # the server's stdout and stderr


@pytest.fixture(scope="module")
def served(tiny_run, tmp_path_factory):
    """`cifarlab serve` in its own process on a free loopback port, with default limits."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    cmd = [sys.executable, "-m", "cifarlab", "serve", str(tiny_run), "--port", str(port), "--max-upload-bytes", str(MAX_UPLOAD), "--top-k", "10"]
    with open(log, "w") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                pytest.fail(f"server exited with {process.returncode}: {log.read_text()}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server did not start in 90 s: {log.read_text()}")
            time.sleep(0.25)
        yield Served(url, log)
    finally:
        process.terminate()
        process.wait(timeout=20)
    assert "Traceback" not in log.read_text()  # no request ever crashed anything


@pytest.fixture(scope="module")
def server(served) -> str:
    """The base URL of the `cifarlab serve` process."""
    return served.url


def as_pairs(answer: dict) -> list[tuple[str, float]]:
    return [(entry["class"], entry["prob"]) for entry in answer["top_k"]]


def assert_same_prediction(answer: dict, expected: list[tuple[str, float]]) -> None:
    got = as_pairs(answer)
    assert [c for c, _ in got] == [c for c, _ in expected]
    # Batching may change the last float32 bits only.
    assert [p for _, p in got] == pytest.approx([p for _, p in expected], abs=1e-6)


def test_health_and_good_image(server, images, expected):
    health = httpx.get(f"{server}/health").json()
    assert health["status"] == "ok" and health["model"] == "paper" and len(health["classes"]) == 10
    response = httpx.post(f"{server}/predict", files={"file": ("img.png", images[3], "image/png")})
    assert response.status_code == 200
    answer = response.json()
    assert answer["top1"] == expected[3][0][0] and answer["filename"] == "img.png" and answer["converted"] == []
    assert_same_prediction(answer, expected[3])
    three = httpx.post(f"{server}/predict?top_k=3", files={"file": ("img.png", images[3])}).json()
    assert len(three["top_k"]) == 3


@pytest.mark.parametrize(
    "request_kwargs, status, message",
    [
        ({"files": {"file": ("big.png", os.urandom(3 * MAX_UPLOAD))}}, 413, "upload too large"),
        ({"files": {"file": ("junk.png", os.urandom(2000))}}, 422, "junk.png: not an image"),
        ({"files": {"file": ("empty.png", b"")}}, 400, "empty"),
        ({"files": {"image": ("x.png", b"x")}}, 400, "no file in the form field 'file'"),
        ({"content": b"\x89PNG raw bytes", "headers": {"content-type": "image/png"}}, 415, "multipart/form-data"),
        ({"content": b"garbage", "headers": {"content-type": "multipart/form-data; boundary=zz"}}, 400, "multipart"),
    ],
    ids=["oversize", "garbage-bytes", "empty", "wrong-field", "not-multipart", "malformed-multipart"],
)
def test_bad_requests_get_a_clear_4xx(server, images, request_kwargs, status, message):
    response = httpx.post(f"{server}/predict", **request_kwargs)
    assert response.status_code == status
    assert message in response.json()["detail"]
    assert httpx.get(f"{server}/health").status_code == 200  # still serving


def test_a_file_part_labelled_as_no_image_is_refused_as_the_schema_says(server, images):
    """The upload's encoding in the schema names image/* or raw bytes; a PNG sent as text/plain is
    refused (415), as schemathesis's negative checks expect, and raw bytes are read as an image."""
    refused = httpx.post(f"{server}/predict", files={"file": ("img.png", images[0], "text/plain")})
    assert refused.status_code == 415 and "'text/plain' is not an image type" in refused.json()["detail"]
    raw = httpx.post(f"{server}/predict", files={"file": ("img", images[0], "application/octet-stream")})
    assert raw.status_code == 200


def test_truncated_image_and_oversize_without_content_length(server, images):
    truncated = images[0][: len(images[0]) // 2]
    response = httpx.post(f"{server}/predict", files={"file": ("cut.png", truncated)})
    assert response.status_code == 422 and "truncated" in response.json()["detail"]

    def chunks():  # a streamed body has no Content-Length: the limit still holds
        boundary = b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
        yield boundary
        for _ in range(10):
            yield os.urandom(MAX_UPLOAD // 4)
        yield b"\r\n--b0undary--\r\n"

    response = httpx.post(f"{server}/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b0undary"})
    assert response.status_code == 413 and "limit is 50,000 bytes" in response.json()["detail"]


def test_fifty_concurrent_requests_are_batched_and_all_correct(server, images, expected):
    before = httpx.get(f"{server}/health").json()

    # Threads, not asyncio.run: the session's Playwright browser keeps an event loop in this thread.
    def post(i: int) -> httpx.Response:
        files = {"file": (f"{i % 10}.png", images[i % 10], "image/png")}
        return httpx.post(f"{server}/predict", files=files, timeout=60)

    with concurrent.futures.ThreadPoolExecutor(max_workers=50) as pool:
        responses = list(pool.map(post, range(50)))
    assert [r.status_code for r in responses] == [200] * 50
    for i, response in enumerate(responses):
        answer = response.json()
        assert answer["filename"] == f"{i % 10}.png"
        assert_same_prediction(answer, expected[i % 10])  # each answer is its own image's
    after = httpx.get(f"{server}/health").json()
    assert after["requests"] - before["requests"] == 50
    assert after["batches"] - before["batches"] < 50 and after["largest_batch"] > 1  # requests shared forward passes


def listening_addresses(port: int) -> set[str]:
    """The local addresses (hex, as the kernel lists them) of TCP sockets listening on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                address, port_hex = fields[1].rsplit(":", 1)
                if fields[3] == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                    found.add(address)
    return found


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's /proc/net/tcp")
def test_binds_to_loopback_unless_told_otherwise(served):
    """`cifarlab serve RUN` (no --host) listens on 127.0.0.1 only, as the kernel sees the socket."""
    port = int(served.url.rsplit(":", 1)[1])
    assert listening_addresses(port) == {"0100007F"}  # 127.0.0.1, not 0.0.0.0 (00000000) nor ::


def test_port_in_use_is_a_one_line_error(tiny_run, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert main(["serve", str(tiny_run), "--port", str(taken.getsockname()[1])]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cannot listen on 127.0.0.1:" in err


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM}")
def test_upload_page_in_headless_chromium(server, images, expected, tmp_path, browser):
    png = tmp_path / "upload.png"
    png.write_bytes(images[5])
    page = browser.new_page()  # the session's headless Chromium (conftest.browser)
    try:
        page.goto(f"{server}/")
        page.set_input_files("#file", str(png))
        page.click("button[type=submit]")
        page.wait_for_selector("#predicted", timeout=30_000)
        assert page.inner_text("#predicted") == expected[5][0][0]
        assert page.locator("#classes tr").count() == 10
        assert page.evaluate("document.getElementById('preview').naturalWidth") == 32  # the image is shown
        page.screenshot(path=str(tmp_path / "serve.png"))  # kept in pytest's tmp folder to look at
    finally:
        page.close()


# ---------------------------------------------------------------- abuse: slow clients, big images, odd headers

HEADER_S, BODY_S, KEEP_ALIVE_S = 1.0, 2.0, 1.0  # the guarded server's deadlines, short to keep the tests quick
# A timer never fires early, but a loaded 2-core machine (six test suites at once) may run it
# seconds late: the upper bound only says "closed by the server, not left open", so it is generous.
LATE_S = 15.0
EARLY_S = 0.1  # our clock starts when connect/send returns, a hair after the server's
GUARD_PIXELS = 1024 * 1024


class Guarded(NamedTuple):
    url: str
    app: object  # the FastAPI app
    server: object  # its uvicorn.Server


@contextlib.contextmanager
def in_process_server(app, **deadlines):
    """`app` on a free loopback port in a uvicorn thread (the setup `serve` uses); yields Guarded."""
    port = free_port()
    server = make_server(app, port=port, **deadlines)
    thread = threading.Thread(target=server.run, name="in-process-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the in-process server did not start"
        time.sleep(0.05)
    try:
        yield Guarded(f"http://127.0.0.1:{port}", app, server)
    finally:
        server.should_exit = True
        thread.join(timeout=20)


@pytest.fixture(scope="module")
def guarded(tiny_run):
    """An in-process server with short deadlines and a one-thread, one-place decode queue."""
    app = create_app(tiny_run, max_upload_bytes=MAX_UPLOAD, max_pixels=GUARD_PIXELS, decode_workers=1, decode_queue=1, body_timeout_s=BODY_S)
    with in_process_server(app, keep_alive_s=KEEP_ALIVE_S, header_timeout_s=HEADER_S) as running:
        yield running


def raw_socket(url: str, data: bytes = b"") -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    sock.sendall(data)
    return sock


def read_response(sock: socket.socket) -> bytes:
    """One whole HTTP response (headers and Content-Length body) from a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def watch_until_closed(sockets: dict[str, socket.socket], dribble: dict[str, bytes], limit_s: float) -> dict:
    """Read every socket until the server closes it, sending each `dribble` socket one more byte
    every 0.2 s meanwhile; returns name -> (bytes received, time.monotonic() when closed or None)."""
    start = time.monotonic()
    received = {name: b"" for name in sockets}
    closed_after: dict[str, float | None] = {name: None for name in sockets}
    while time.monotonic() - start < limit_s and None in closed_after.values():
        open_ = {sock: name for name, sock in sockets.items() if closed_after[name] is None}
        readable, _, _ = select.select(list(open_), [], [], 0.2)
        for sock in readable:
            name = open_[sock]
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:  # closed while our dribbled bytes were still unread
                chunk = b""
            received[name] += chunk
            if not chunk:
                closed_after[name] = time.monotonic()
        for name, byte in dribble.items():
            if closed_after[name] is None:
                with contextlib.suppress(OSError):  # the server already closed it; the next read says so
                    sockets[name].send(byte)
    for sock in sockets.values():
        sock.close()
    return {name: (received[name], closed_after[name]) for name in sockets}


def multipart(data: bytes, boundary: str = "XyZzy", filename: str = "a.png") -> bytes:
    return (
        (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\nContent-Type: image/png\r\n\r\n').encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )


def test_idle_and_slow_clients_are_closed_within_their_deadlines(guarded, images):
    url = guarded.url
    post = b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=XyZzy\r\n"
    body = multipart(images[0])
    half_body = post + f"Content-Length: {len(body)}\r\n\r\n".encode() + body[: len(body) // 2]
    sends = {"silent": b"", "half headers": post, "dribbled headers": b"P", "half body": half_body, "dribbled body": half_body}
    sockets, started = {}, {}  # each socket's deadline runs from its own start
    for name, data in ((f"{kind} {i}", data) for kind, data in sends.items() for i in range(3)):
        sockets[name] = raw_socket(url, data)
        started[name] = time.monotonic()
    dribble = {name: (b"O" if name.startswith("dribbled headers") else b"x") for name in sockets if name.startswith("dribbled")}
    for name in ("idle keep-alive", "half second request"):
        sockets[name] = raw_socket(url, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert read_response(sockets[name]).startswith(b"HTTP/1.1 200")  # answered, then kept alive
        started[name] = time.monotonic()
    sockets["half second request"].sendall(b"GET /health HTTP/1.1\r\n")
    started["half second request"] = time.monotonic()

    results = watch_until_closed(sockets, dribble, limit_s=BODY_S + LATE_S)
    hanging = [name for name, (_, closed_at) in results.items() if closed_at is None]
    assert not hanging, f"still open: {hanging}"
    for name, (answer, closed_at) in results.items():
        deadline = KEEP_ALIVE_S if name == "idle keep-alive" else BODY_S if "body" in name else HEADER_S
        closed_after = closed_at - started[name]
        assert deadline - EARLY_S < closed_after < deadline + LATE_S, (name, closed_after)  # at its deadline, not before
        if name.startswith(("half headers", "half body", "half second")):
            assert answer.startswith(b"HTTP/1.1 408"), (name, answer)
            assert b"not complete within" in answer
        elif name.startswith("dribbled"):
            assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), (name, answer)  # 408 unless reset first
        else:
            assert answer == b"", (name, answer)  # nothing was asked: closed without an answer
    assert httpx.get(f"{url}/health").status_code == 200  # still serving


def connection_of(guarded: Guarded, sock: socket.socket):
    """The uvicorn protocol object serving this client socket."""
    client = sock.getsockname()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for protocol in list(guarded.server.server_state.connections):
            if tuple(protocol.client or ()) == client:
                return protocol
        time.sleep(0.05)
    raise AssertionError(f"no uvicorn connection for {client}")


def wait_for(condition, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()


def test_header_deadline_reads_uvicorn_internals_that_still_exist(guarded, images):
    """serve/server.py's header deadline reads uvicorn's private `protocol.cycle.response_complete`
    (uvicorn has no public header timeout), so pyproject.toml pins the uvicorn range it was tested
    with. An upgrade that renames or changes it fails here, loudly, not silently in production."""
    import tomllib

    import uvicorn
    from packaging.specifiers import SpecifierSet

    serve_extra = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["optional-dependencies"]["serve"]
    pin = next(dep.removeprefix("uvicorn") for dep in serve_extra if dep.startswith("uvicorn"))
    assert "<" in pin and uvicorn.__version__ in SpecifierSet(pin), (uvicorn.__version__, pin)
    with raw_socket(guarded.url, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n") as sock:
        assert read_response(sock).startswith(b"HTTP/1.1 200")
        protocol = connection_of(guarded, sock)
        assert wait_for(lambda: protocol.cycle.response_complete is True)  # between requests
        body = multipart(images[0])
        sock.sendall(
            b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=XyZzy\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body[:10]
        )
        assert wait_for(lambda: protocol.cycle.response_complete is False)  # a request under way
        assert protocol.timer is None  # its headers arrived: the header deadline stopped
        sock.sendall(body[10:])
        assert read_response(sock).startswith(b"HTTP/1.1 200")
        assert wait_for(lambda: protocol.cycle.response_complete is True)


def solid_png(width: int, height: int, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height), "sienna").save(buffer, format="PNG")
    return buffer.getvalue()


def test_full_decode_queue_is_refused_with_503(guarded):
    url, decoder = guarded.url, guarded.app.state.service.decoder
    decode, gate = decoder.decode, threading.Event()
    decoder.decode = lambda data: (gate.wait(20), decode(data))[1]  # hold the one decode thread until released
    large = solid_png(1000, 1000)  # under the guarded server's 1 Mpixel limit

    def post(i: int) -> httpx.Response:
        return httpx.post(f"{url}/predict", files={"file": (f"{i}.png", large, "image/png")}, timeout=30)

    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
            pending = {pool.submit(post, i) for i in range(4)}
            refused = []
            while len(refused) < 2:  # one decoding, one waiting: the other two are refused at once
                done, pending = concurrent.futures.wait(pending, timeout=20, return_when=concurrent.futures.FIRST_COMPLETED)
                assert done, "no request was refused while the decode queue was full"
                refused += [future.result() for future in done]
            gate.set()
            accepted = [future.result() for future in pending]
    finally:
        gate.set()
        decoder.decode = decode
    for response in refused:
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert "too many images being decoded" in response.json()["detail"]
    assert [r.status_code for r in accepted] == [200, 200]
    assert httpx.get(f"{url}/health").json()["decode_refused"] == 2


def test_service_pixel_limit_is_below_predicts(server, tiny_run, tmp_path):
    huge = solid_png(4096, 4096, "L")  # 16 Mpixel in 16 KB
    (tmp_path / "huge.png").write_bytes(huge)
    assert main(["predict", str(tiny_run), str(tmp_path / "huge.png"), "--quiet"]) == 0  # predict takes it
    response = httpx.post(f"{server}/predict", files={"file": ("huge.png", huge, "image/png")})
    assert response.status_code == 422
    assert f"too many pixels (4096x4096; the limit is {MAX_SERVE_PIXELS:,})" in response.json()["detail"]
    frame = httpx.post(f"{server}/predict", files={"file": ("frame.png", solid_png(1920, 1080), "image/png")})
    assert frame.status_code == 200 and frame.json()["original_size"] == [1920, 1080]


@pytest.mark.parametrize("content_type", ["Multipart/Form-Data; Boundary=XyZzy", "MULTIPART/FORM-DATA; boundary=XyZzy"])
def test_multipart_content_type_in_any_letter_case(server, images, expected, content_type):
    response = httpx.post(f"{server}/predict", content=multipart(images[2]), headers={"content-type": content_type})
    assert response.status_code == 200
    assert_same_prediction(response.json(), expected[2])


def test_client_disconnecting_mid_upload_is_one_log_line(served, images):
    before = served.log.read_text().splitlines()
    body = multipart(os.urandom(MAX_UPLOAD // 2))
    head = (
        f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=XyZzy\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with raw_socket(served.url, head + body[: len(body) // 3]):
        time.sleep(0.3)  # the server is reading the body when the client goes
    assert wait_for(lambda: "disconnected" in served.log.read_text(), seconds=30)
    # Later requests are answered after whatever the disconnected one logged (one event loop, one
    # log handler), so after two of them any traceback of the disconnect is in the log too.
    for _ in range(2):
        assert httpx.get(f"{served.url}/health").status_code == 200
    new = served.log.read_text().splitlines()[len(before) :]
    assert len(new) == 1 and "disconnected during its upload (POST /predict)" in new[0], new
    assert httpx.get(f"{served.url}/health").status_code == 200


def test_abuse_limits_are_serve_flags(tiny_run, monkeypatch, capsys):
    seen = {}
    monkeypatch.setattr("cifarlab.serve.serve", lambda run, **options: seen.update(options))
    main(
        [
            "serve",
            str(tiny_run),
            "--max-pixels",
            "4096",
            "--decode-workers",
            "3",
            "--decode-queue",
            "5",
            "--keep-alive",
            "2",
            "--header-timeout",
            "4",
            "--body-timeout",
            "9",
        ]
    )
    expected = {"max_pixels": 4096, "decode_workers": 3, "decode_queue": 5, "keep_alive_s": 2, "header_timeout_s": 4, "body_timeout_s": 9}
    assert {key: seen[key] for key in expected} == expected
    monkeypatch.undo()
    assert main(["serve", str(tiny_run), "--decode-workers", "0"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--decode-workers must be positive" in err


def test_micro_batcher_alone_batches_and_answers_each_caller():
    """Without HTTP: concurrent submits share forward passes, each gets its own row, max_batch holds."""
    import asyncio

    import torch

    from cifarlab.serve import MicroBatcher

    sizes = []

    def double(batch: torch.Tensor) -> torch.Tensor:
        sizes.append(len(batch))
        return batch.float() * 2

    async def scenario():
        batcher = MicroBatcher(double, max_batch=4, max_wait_ms=50)
        batcher.start()
        try:
            return await asyncio.gather(*(batcher.submit(torch.full((3,), i)) for i in range(10)))
        finally:
            await batcher.stop()

    # in a thread of its own: the session's browser (Playwright) may hold an event loop in this one
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        rows = pool.submit(asyncio.run, scenario()).result(timeout=60)
    assert [row[0].item() for row in rows] == [2.0 * i for i in range(10)]
    assert sum(sizes) == 10 and max(sizes) <= 4 and len(sizes) < 10


# ---------------------------------------------------------------- the OpenAPI schema, checked by schemathesis

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import strategies as st  # noqa: E402  (hypothesis comes with schemathesis, found just above)


@st.composite
def png_uploads(draw) -> bytes:
    """Small PNG images of random size, mode and colour: what a client of the service uploads."""
    width, height = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    mode = draw(st.sampled_from(["RGB", "L", "RGBA", "P"]))
    buffer = io.BytesIO()
    Image.new(mode, (width, height), draw(st.integers(0, 255))).save(buffer, format="PNG")
    return buffer.getvalue()


def answer(recorder, case_id: str) -> str:
    """The status and start of the body the service answered a schemathesis case with."""
    response = getattr(recorder.interactions.get(case_id), "response", None)
    return f"answered {response.status_code} {response.content[:200]!r}" if response else "no answer"


def schemathesis_failures(base_url: str) -> tuple[list[str], int]:
    """What `schemathesis run` would report against the service (every phase, default checks, bounded
    examples and time), as one line per failed check or error; and how many checks ran."""
    from schemathesis import engine
    from schemathesis.engine import Status, events

    config = schemathesis.Config.from_dict({"seed": 20, "max-time": 30, "generation": {"max-examples": 8, "database": "none"}})
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", config=config)
    failures, checked = [], 0
    for event in engine.from_schema(schema).execute():
        if isinstance(event, (events.NonFatalError, events.FatalError)):
            failures.append(f"error: {getattr(event, 'value', None) or event.exception}")
        recorder = getattr(event, "recorder", None)
        if isinstance(event, (events.ScenarioFinished, events.FuzzScenarioFinished)) and recorder is not None:
            for case_id, case_checks in recorder.checks.items():
                checked += len(case_checks)
                failures += [
                    f"{check.name} ({recorder.label}): {check.failure_info.failure.title}; "
                    f"{answer(recorder, case_id)}; {check.failure_info.code_sample}"
                    for check in case_checks
                    if check.status == Status.FAILURE
                ]
    return sorted(set(failures)), checked


def test_openapi_schema_matches_every_answer(tiny_run):
    """schemathesis against a real server of the app: schema-valid requests (random PNG uploads)
    accepted, invalid ones refused with a documented 4xx, no 500, no undocumented status or body."""
    schemathesis.openapi.media_type("image/png", png_uploads())  # the upload's encoding names image/png
    with in_process_server(create_app(tiny_run, max_upload_bytes=MAX_UPLOAD)) as running:
        failures, checked = schemathesis_failures(running.url)
    assert checked > 20  # it did exercise the service (fewer when a loaded machine hits max-time)
    assert failures == []


def test_openapi_documents_the_upload_and_every_status(server):
    schema = httpx.get(f"{server}/openapi.json").json()
    predict = schema["paths"]["/predict"]["post"]
    upload = predict["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert upload["required"] == ["file"] and upload["properties"]["file"]["format"] == "binary"
    assert set(predict["responses"]) == {"200", "400", "408", "413", "415", "422", "503"}
    top_k = next(p for p in predict["parameters"] if p["name"] == "top_k")
    assert {"minimum": 1, "maximum": 10}.items() <= next(o for o in top_k["schema"]["anyOf"] if o["type"] == "integer").items()
    for path in ("/", "/health"):
        assert "head" in schema["paths"][path]
        assert httpx.head(f"{server}{path}").status_code == 200


def test_upload_page_template_escapes_what_it_shows():
    """The page is a Jinja2 template with autoescape: a value with markup shows as text."""
    from cifarlab.serve.app import PAGES

    page = PAGES.get_template("upload.html").render(model="<script>alert(0)</script>", classes=10, upload_limit="1,024", pixel_limit="<b>4</b>")
    assert "<script>alert(0)</script>" not in page and "&lt;script&gt;alert(0)&lt;/script&gt;" in page
    assert "&lt;b&gt;4&lt;/b&gt; pixels" in page
