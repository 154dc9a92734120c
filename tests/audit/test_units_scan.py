"""Files of a scan as units of work: an S3 prefix scanned on workers gives the local verdicts."""

from __future__ import annotations

import io
import json
import os
import pickle
import uuid
import zipfile
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch

from bastion.artifacts.scan import scan_paths, scan_targets
from bastion.artifacts.scan._units import S3Location, S3Object
from bastion.audit.executor import ProcessPoolExecutor, RayExecutor
from bastion.errors import InputError


class _Payload:
    def __reduce__(self) -> tuple[object, tuple[()]]:
        return (os.getcwd, ())


def _files(root: Path) -> None:
    (root / "nested").mkdir(parents=True)
    (root / "clean.pkl").write_bytes(pickle.dumps({"w": [1.0, 2.0]}))
    (root / "evil.pkl").write_bytes(pickle.dumps(_Payload()))
    torch.save({"w": torch.zeros(1 << 21)}, root / "model.pt")  # 8 MiB of tensor bytes
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("inner/evil.pkl", pickle.dumps(_Payload()))
    (root / "nested" / "bundle.zip").write_bytes(buf.getvalue())
    (root / "nested" / "notes.txt").write_text("not a model\n")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, server_url) -> tuple[Path, str]:
    """The same files in a local folder and under a fresh prefix of the test bucket."""
    base = server_url("BASTION_TEST_S3_URL", "scripts/start-s3.sh")
    for var, value in (
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        os.environ.setdefault(var, value)
    root = tmp_path_factory.mktemp("scan-corpus")
    _files(root)
    parsed = urlparse(base)
    prefix = f"{parsed.path.strip('/')}/scan-{uuid.uuid4().hex[:10]}"
    url = parsed._replace(path=f"/{prefix}").geturl()
    location = S3Location.parse(url)
    client = location.client()
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        client.upload_file(str(p), location.bucket, f"{prefix}/{p.relative_to(root).as_posix()}")
    return root, url


def _comparable(report, prefix: str) -> list:
    return json.loads(json.dumps([f.to_dict() for f in report.files]).replace(prefix, "ROOT"))


def test_an_s3_prefix_scanned_on_ray_workers_gives_the_local_verdicts(corpus, ray_cluster) -> None:
    root, url = corpus
    local = scan_paths([root])
    remote = scan_targets([url], executor=RayExecutor())
    assert _comparable(remote, S3Location.parse(url).url()) == _comparable(local, str(root))
    verdicts = {Path(f.path).name: f.verdict.value for f in remote.files}
    assert verdicts == {
        "bundle.zip": "unsafe",
        "notes.txt": "skipped",
        "clean.pkl": "clean",
        "evil.pkl": "unsafe",
        "model.pt": "clean",
    }
    assert remote.exit_code == local.exit_code == 1


def test_a_large_checkpoint_is_read_in_ranges_not_downloaded_whole(corpus, monkeypatch) -> None:
    _, url = corpus
    read: list[int] = []
    original = S3Object.readinto

    def counting(self, b):
        n = original(self, b)
        read.append(self.fetched)
        return n

    monkeypatch.setattr(S3Object, "readinto", counting)
    model = scan_targets([url.replace("?", "/model.pt?", 1)])
    assert [f.verdict.value for f in model.files] == ["clean"]
    assert 0 < max(read) <= (8 << 20) // 4  # the 8 MiB of tensor bytes were skipped, not fetched


def test_a_local_folder_on_workers_matches_the_local_scan(corpus) -> None:
    root, _ = corpus
    remote = scan_targets([root], executor=ProcessPoolExecutor(workers=2))
    assert _comparable(remote, str(root)) == _comparable(scan_paths([root]), str(root))


def test_bad_targets_are_refused_with_a_clear_message(corpus, tmp_path) -> None:
    _, url = corpus
    with pytest.raises(InputError, match="no objects under"):
        scan_targets([url.replace("?", "-nothing-here?", 1)])
    with pytest.raises(InputError, match="unknown S3 URL parameter"):
        scan_targets(["s3://bucket/p?token=x"])
    with pytest.raises(InputError, match="no such file"):
        scan_targets([tmp_path / "absent"])


def test_scan_an_s3_prefix_on_the_command_line(corpus) -> None:
    from typer.testing import CliRunner

    from bastion.cli.main import app

    root, url = corpus
    result = CliRunner().invoke(app, ["scan", url, "--executor", "processes:2", "-f", "json"])
    assert result.exit_code == 1, result.output  # the unsafe pickles
    doc = json.loads(result.output)
    assert doc["counts"] == {**doc["counts"], "unsafe": 2, "clean": 2, "skipped": 1}
    assert all(f["path"].startswith("s3://") for f in doc["files"])
    missing = CliRunner().invoke(app, ["scan", str(root / "absent.pt")])
    assert missing.exit_code == 2 and "no such file" in missing.output
