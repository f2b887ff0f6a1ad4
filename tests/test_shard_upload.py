"""``speechdata shard --out s3://...``: the dataset written as objects (moto's S3 server on
127.0.0.1), the manifest last; read back by the loader from S3 as from the local folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from speechdata import build_dataloader
from speechdata.config import make_dataset_config
from speechdata.errors import ConfigError
from speechdata.shards.plan import ShardOptions
from speechdata.shards.upload import LAST, _order
from speechdata.shards.write import MARKER_DIR, write_shards
from speechdata.storage.fs import reset_filesystems
from speechdata.testing import make_corpus

pytest.importorskip("moto")
from servers import fake_aws_env, moto_s3, s3_upload

torch.set_num_threads(1)

#: moto's state is per process: a bucket of our own, whatever other tests left in theirs
BUCKET = "shard-upload"


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for k, v in fake_aws_env().items():
        monkeypatch.setenv(k, v)
    with moto_s3() as endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        s3_upload(endpoint, BUCKET, {})  # the bucket
        reset_filesystems()
        yield endpoint
    reset_filesystems()


def _batches(manifest: str, tars: str, tok: Path) -> list[list[int]]:
    cfg = make_dataset_config(
        {
            "manifest_filepath": manifest,
            "is_tarred": True,
            "tarred_audio_filepaths": tars,
            "audio_locator": "|audio|",
            "micro_batch_size": 3,
            "drop_last": False,
            "max_duration": None,
            "seed": 2,
        }
    )
    return [b["sample_ids"].tolist() for b in build_dataloader(cfg, tok)]


def test_shard_to_object_storage(tmp_path: Path, s3: str) -> None:
    import boto3

    corpus = make_corpus(tmp_path / "c", n=16, seed=9, max_duration=2.0)
    corpus.train_tokenizer(vocab_size=100, out_dir=tmp_path / "tok")
    tok = tmp_path / "tok" / "tokenizer.model"
    opts = ShardOptions(num_shards=3, progress=False)
    local = write_shards([corpus.manifest], tmp_path / "local", opts)
    report = write_shards([corpus.manifest], "s3://shard-upload/ds", opts)
    assert report.out_dir == "s3://shard-upload/ds" and report.entries == local.entries
    client = boto3.client("s3", endpoint_url=s3, region_name="us-east-1")
    objects = {o["Key"]: o["Size"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix="ds/")["Contents"]}
    files = {
        p.relative_to(tmp_path / "local").as_posix(): p.stat().st_size
        for p in (tmp_path / "local").rglob("*")
        if p.is_file() and MARKER_DIR not in p.parts
    }
    assert objects == {f"ds/{k}": v for k, v in files.items()}  # byte for byte the local layout
    for key in files:
        body = client.get_object(Bucket=BUCKET, Key=f"ds/{key}")["Body"].read()
        assert body == (tmp_path / "local" / key).read_bytes()
    # the loader reads it back from S3 (by range) as from the local folder
    want = _batches(
        str(tmp_path / "local" / "tarred_audio_manifest.json"),
        str(tmp_path / "local" / "audio_{0..2}.tar"),
        tok,
    )
    got = _batches(
        "s3://shard-upload/ds/tarred_audio_manifest.json", "s3://shard-upload/ds/audio_{0..2}.tar", tok
    )
    assert got == want
    # a rerun uploads nothing again: every object is there with its size
    client.delete_object(Bucket=BUCKET, Key="ds/audio_1.tar")
    again = write_shards([corpus.manifest], "s3://shard-upload/ds", opts)
    assert again.reused == 3
    assert client.head_object(Bucket=BUCKET, Key="ds/audio_1.tar")["ContentLength"] == files["audio_1.tar"]
    # the staging folder is on this machine: Ray tasks elsewhere could not write into it
    on_ray = ShardOptions(num_shards=3, progress=False, executor="ray")
    with pytest.raises(ConfigError, match=r"s3://shard-upload/other with --executor ray is not supported"):
        write_shards([corpus.manifest], "s3://shard-upload/other", on_ray)


def test_manifest_and_metadata_go_last(tmp_path: Path) -> None:
    for rel in (
        "audio_0.tar",
        "sharded_manifests/manifest_0.json",
        "tarred_audio_manifest.json",
        "metadata.yaml",
        "bucket1/audio_0.tar",
        "bucket1/metadata.yaml",
        "bucket1/tarred_audio_manifest.json",
        f"{MARKER_DIR}/audio_0.done",
    ):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    order = [p.relative_to(tmp_path).as_posix() for p in _order(tmp_path, MARKER_DIR)]
    assert order[-1] == "metadata.yaml" and MARKER_DIR + "/audio_0.done" not in order
    firsts = [o for o in order if Path(o).name not in LAST]
    assert order[: len(firsts)] == firsts  # every tar and shard manifest before any LAST file
    assert order.index("bucket1/metadata.yaml") < order.index("tarred_audio_manifest.json")
