"""Archive checks: what TorchServe would register but never load is refused, by the archive step,
`tsctl register`, the rollout and a server start, with the file, the fault and the fix named.

The same refusals against a real TorchServe are in tests/e2e/test_bad_archives.py and
tests/e2e/test_startup.py; how a start tells a slow model from a broken one is in
tests/unit/test_startup_watch.py.
"""

from __future__ import annotations

import json
import logging
import shutil
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from scripts.build import archive
from scripts.build.store import (
    MANIFEST,
    ArchiveError,
    check_archive,
    check_startup,
    startup_archives,
    version_archive,
)
from scripts.config.model import load_spec
from scripts.operate import tsctl
from scripts.operate.exits import Exit, RolloutFailed
from scripts.operate.registry import place_archive

GOOD = Path("model_store/tabular.mar")
REBUILD = "fix: rebuild it with `make archive`"


@pytest.fixture(autouse=True)
def archives_built() -> None:
    if not GOOD.is_file():
        pytest.fail(f"no {GOOD}: run `make archive` first")


def rewritten(source: Path, target: Path, drop: str = "",
              replace_with: dict[str, bytes] | None = None) -> Path:
    """A copy of `source` as a sound zip, without member `drop` and with some members' bytes replaced."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as new:
        for name in old.namelist():
            if name != drop:
                new.writestr(name, (replace_with or {}).get(name, old.read(name)))
    return target


def manifest_of(source: Path) -> dict[str, object]:
    with zipfile.ZipFile(source) as old:
        return dict(json.loads(old.read(MANIFEST)))


def test_a_good_archive_says_what_it_holds() -> None:
    info = check_archive(GOOD)
    assert (info.name, info.version, info.handler) == ("tabular", "1.0", "tabular.py")
    assert info.workers == (1, 1) and info.model_config["responseTimeout"] > 0


def test_a_truncated_archive_is_named_as_damaged(tmp_path: Path) -> None:
    truncated = tmp_path / "tabular.mar"
    truncated.write_bytes(GOOD.read_bytes()[:30000])  # as an interrupted copy leaves it
    with pytest.raises(ArchiveError) as refused:
        check_archive(truncated)
    assert str(refused.value).startswith(f"{truncated}: not a readable zip")
    assert "truncated or damaged" in str(refused.value) and REBUILD in str(refused.value)


def test_a_damaged_member_fails_its_crc_and_only_the_full_check_reads_it(tmp_path: Path) -> None:
    damaged = tmp_path / "tabular.mar"
    data = bytearray(GOOD.read_bytes())
    with zipfile.ZipFile(GOOD) as good:
        weights = good.getinfo("tabular.safetensors")
    start = weights.header_offset + 30 + len(weights.filename.encode()) + len(weights.extra)
    data[start + 100: start + 108] = bytes(8)  # inside the weights' compressed bytes
    damaged.write_bytes(bytes(data))
    assert check_archive(damaged, verify_data=False).name == "tabular"  # its directory still reads
    with pytest.raises(ArchiveError, match=f"^{damaged}: .*(CRC|damaged)"):
        check_archive(damaged)


def test_a_foreign_zip_is_not_a_model_archive(tmp_path: Path) -> None:
    foreign = tmp_path / "weights.mar"
    with zipfile.ZipFile(foreign, "w") as zipped:
        zipped.writestr("model.safetensors", b"\0" * 64)
    with pytest.raises(ArchiveError, match=f"^{foreign}: a zip without {MANIFEST}, so not a model archive"):
        check_archive(foreign)
    text = tmp_path / "notes.mar"
    text.write_text("not a zip at all\n")
    with pytest.raises(ArchiveError, match="not a readable zip"):
        check_archive(text)


def test_a_manifest_must_be_json_and_name_the_model_and_its_handler(tmp_path: Path) -> None:
    broken = rewritten(GOOD, tmp_path / "a.mar", replace_with={MANIFEST: b"{not json"})
    with pytest.raises(ArchiveError, match=f"{MANIFEST} is not valid JSON"):
        check_archive(broken)
    manifest = manifest_of(GOOD)
    del manifest["model"]["handler"]  # type: ignore[attr-defined]
    no_handler = rewritten(GOOD, tmp_path / "b.mar", replace_with={MANIFEST: json.dumps(manifest).encode()})
    with pytest.raises(ArchiveError, match=f"{MANIFEST} gives no model.handler; {REBUILD}"):
        check_archive(no_handler)


def test_a_handler_file_missing_from_the_archive_is_named(tmp_path: Path) -> None:
    without = rewritten(GOOD, tmp_path / "tabular.mar", drop="tabular.py")
    with pytest.raises(ArchiveError, match="handler 'tabular.py' names tabular.py, which is not in the arch"):
        check_archive(without)
    no_config = rewritten(GOOD, tmp_path / "c.mar", drop="model-config.yaml")
    with pytest.raises(ArchiveError, match="names the model-config model-config.yaml, which is not in"):
        check_archive(no_config)


def test_a_start_refuses_two_archives_of_one_model_at_the_top_of_the_store(tmp_path: Path) -> None:
    store = tmp_path / "store"
    candidate = version_archive(store, "tabular", "2.0")
    candidate.parent.mkdir(parents=True)
    shutil.copyfile(GOOD, store / "tabular.mar")
    manifest = manifest_of(GOOD)
    manifest["model"]["modelVersion"] = "2.0"  # type: ignore[index]
    rewritten(GOOD, candidate, replace_with={MANIFEST: json.dumps(manifest).encode()})
    (store / ".hidden.mar").write_text("TorchServe skips hidden entries")
    # the candidate under .versions/ (and anything hidden) is not loaded at start
    assert startup_archives(store) == [store / "tabular.mar"]
    assert [info.version for info in check_startup(store, startup_archives(store))] == ["1.0"]

    shutil.copyfile(candidate, store / "tabular-2.0.mar")  # a stray candidate at the top
    with pytest.raises(ArchiveError) as refused:
        check_startup(store, startup_archives(store))
    message = str(refused.value)
    assert "tabular-2.0.mar (2.0), tabular.mar (1.0) all hold model 'tabular'" in message
    assert "directory order" in message and f"keep candidates in {store}/.versions/" in message
    # a list in load_models names exactly what is loaded
    assert startup_archives(store, "tabular.mar") == [store / "tabular.mar"]
    assert startup_archives(store, "t=tabular-2.0.mar, x.tar.gz") == [store / "tabular-2.0.mar"]


def test_a_start_names_every_bad_archive_at_once(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    shutil.copyfile(GOOD, store / "tabular.mar")
    (store / "broken.mar").write_bytes(GOOD.read_bytes()[:1000])
    rewritten(GOOD, store / "foreign.mar", drop=MANIFEST)
    with pytest.raises(ArchiveError) as refused:
        check_startup(store, startup_archives(store))
    lines = str(refused.value).splitlines()
    assert [line.split(":")[0] for line in lines] == [str(store / "broken.mar"), str(store / "foreign.mar")]


def test_the_archive_step_refuses_what_it_cannot_load_and_rebuilds_a_damaged_one(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spec = load_spec(Path("configs/models/tabular.yaml"))
    with pytest.raises(RuntimeError, match="TorchServe could not load, so it was not put in the store"):
        archive.check_built(spec, rewritten(GOOD, tmp_path / "x.mar", drop="tabular.py"))
    with pytest.raises(RuntimeError, match="wrote tabular 1.0 for .* which asks for tabular 2.0"):
        archive.check_built(replace(spec, version="2.0"), GOOD)

    store = tmp_path / "store"
    (store / archive.FINGERPRINTS).mkdir(parents=True)
    (store / archive.FINGERPRINTS / "tabular.sha256").write_text(archive.fingerprint(spec))
    (store / "tabular.mar").write_bytes(GOOD.read_bytes()[:20000])  # inputs unchanged, archive damaged
    with caplog.at_level(logging.INFO):
        assert archive.main([str(spec.source), "--store", str(store)]) == 0
    assert "not a readable zip" in caplog.text and "rebuilding it" in caplog.text
    assert check_archive(store / "tabular.mar").version == "1.0"
    assert not [path for path in store.iterdir() if path.name.startswith(".staging")]  # no half archive


def test_tsctl_register_refuses_a_damaged_archive_before_calling_torchserve(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = tmp_path / "model_store"
    store.mkdir()
    (store / "tabular.mar").write_bytes(GOOD.read_bytes()[:30000])
    properties = tmp_path / "config.properties"
    # nothing listens on port 9 (discard): a call to TorchServe would end in exit 3, not 2
    properties.write_text("inference_address=http://127.0.0.1:9\nmanagement_address=http://127.0.0.1:9\n"
                          "model_store=model_store\n")
    code = tsctl.main(["--ts-config", str(properties), "--server-dir", str(tmp_path),
                       "register", str(store / "tabular.mar")])
    assert code == 2
    assert f"error: {store.resolve() / 'tabular.mar'}: not a readable zip" in caplog.text


def test_a_rollout_refuses_a_damaged_kept_version_and_leaves_the_default_in_place(tmp_path: Path) -> None:
    store = tmp_path / "store"
    kept = version_archive(store, "tabular", "1.0")
    kept.parent.mkdir(parents=True)
    shutil.copyfile(GOOD, kept)
    manifest = manifest_of(GOOD)
    manifest["model"]["modelVersion"] = "2.0"  # type: ignore[index]
    rewritten(GOOD, version_archive(store, "tabular", "2.0"), drop="tabular.py",
              replace_with={MANIFEST: json.dumps(manifest).encode()})
    shutil.copyfile(GOOD, store / "tabular.mar")
    with pytest.raises(RolloutFailed) as refused:
        place_archive(store, "tabular", "2.0")
    assert refused.value.code == Exit.USAGE and "which is not in the archive" in str(refused.value)
    assert check_archive(store / "tabular.mar").version == "1.0"  # the default's archive untouched
