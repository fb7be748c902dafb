"""Model sources: the local directory (plain folders and git repos) and the Hub (against the
local fake Hub), read at pinned revisions without loading weights."""

from __future__ import annotations

import json
import os
import struct
import subprocess
from pathlib import Path

import pytest
from huggingface_hub import constants, hf_hub_download

from leaderboard.catalog.sources import (
    InvalidRepoId,
    RepoAccessDenied,
    RepoNotFound,
    RevisionNotFound,
    SourceUnavailable,
    get_source,
)
from leaderboard.catalog.sources.hub import HubSource
from leaderboard.catalog.sources.local import LocalSource
from tests.builders import card_text, default_card, make_dataset_repo, make_model_repo

PARAMS = 640  # what tests.builders.write_safetensors writes by default
SHA_CHARS = set("0123456789abcdef")


def git(path: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.email=t@example.org", "-c", "user.name=t", *args],
        cwd=path,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def header_only_safetensors(path: Path, shapes: dict[str, list[int]]) -> None:
    """A safetensors header whose tensors' bytes are missing: only a header reader can count it."""
    header = {
        name: {"dtype": "BF16", "shape": shape, "data_offsets": [0, 0]}
        for name, shape in shapes.items()
    }
    header["__metadata__"] = {"format": "pt"}  # type: ignore[assignment]
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)


def sharded_repo(root: Path, repo_id: str) -> Path:
    path = make_model_repo(root, repo_id, weights="none")
    header_only_safetensors(path / "model-00001-of-00002.safetensors", {"a": [1000, 1000]})
    header_only_safetensors(path / "model-00002-of-00002.safetensors", {"b": [300, 10], "c": []})
    # A stray file beside the shards (an export, a different variant) is not part of the model.
    header_only_safetensors(path / "consolidated.safetensors", {"x": [7, 7]})
    index = {
        "metadata": {"total_size": 0},
        "weight_map": {
            "a": "model-00001-of-00002.safetensors",
            "b": "model-00002-of-00002.safetensors",
            "c": "model-00002-of-00002.safetensors",
        },
    }
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    return path


# --- local: plain folders ------------------------------------------------------------------------


def test_local_snapshot_of_a_plain_folder(model_root):
    make_model_repo(
        model_root,
        "org/model",
        mergekit={"merge_method": "slerp", "models": [{"model": "a/b"}]},
        adapter={"base_model_name_or_path": "a/b", "peft_type": "LORA"},
    )

    snap = get_source().snapshot("org/model")

    assert snap.repo_id == "org/model"
    assert snap.kind == "model"
    assert snap.files == [
        "README.md",
        "adapter_config.json",
        "config.json",
        "mergekit_config.yml",
        "model.safetensors",
    ]
    assert snap.card_text == card_text(default_card("org/model"), None, "org/model")
    assert snap.config is not None and snap.config["architectures"] == ["LlamaForCausalLM"]
    assert snap.mergekit_config == {"merge_method": "slerp", "models": [{"model": "a/b"}]}
    assert snap.adapter_config == {"base_model_name_or_path": "a/b", "peft_type": "LORA"}
    assert snap.parameter_count == PARAMS
    assert snap.tags == ["text-generation"]
    assert snap.local_path == str(model_root / "org" / "model")
    assert len(snap.sha) == 40 and set(snap.sha) <= SHA_CHARS


def test_content_hash_is_stable_and_follows_content(model_root):
    path = make_model_repo(model_root, "org/model")
    first = LocalSource(model_root).snapshot("org/model").sha

    assert LocalSource(model_root).snapshot("org/model").sha == first
    assert LocalSource(model_root).snapshot("org/model", "main").sha == first
    assert LocalSource(model_root).snapshot("org/model", first).sha == first

    (path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    changed = LocalSource(model_root).snapshot("org/model").sha
    assert changed != first
    (path / "config.json").rename(path / "config2.json")
    assert LocalSource(model_root).snapshot("org/model").sha not in (first, changed)


def test_content_hash_sees_a_same_size_rewrite_by_the_same_source(model_root):
    path = make_model_repo(model_root, "org/model")
    source = LocalSource(model_root)
    before = source.snapshot("org/model").sha
    readme = path / "README.md"
    text = readme.read_text()
    readme.write_text(text.replace("causal", "CAUSAL"))
    stat = readme.stat()
    os.utime(readme, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))

    assert source.snapshot("org/model").sha != before


def test_plain_folder_refuses_other_revisions(model_root):
    make_model_repo(model_root, "org/model")
    sha = LocalSource(model_root).snapshot("org/model").sha

    with pytest.raises(RevisionNotFound) as excinfo:
        get_source().snapshot("org/model", "v1.0")

    assert str(excinfo.value) == (
        "revision 'v1.0' not found: org/model is a plain folder, not a git repository, so its "
        f"only revision is its content hash {sha}"
    )


def test_sharded_weights_are_counted_from_the_index(model_root):
    sharded_repo(model_root, "org/sharded")

    snap = get_source().snapshot("org/sharded")

    assert snap.parameter_count == 1_000_000 + 3000 + 1


def test_missing_shard_leaves_the_count_unknown(model_root):
    path = sharded_repo(model_root, "org/sharded")
    (path / "model-00002-of-00002.safetensors").unlink()

    assert get_source().snapshot("org/sharded").parameter_count is None


def test_several_unindexed_safetensors_files_are_summed(model_root):
    path = make_model_repo(model_root, "org/adapter", weights="none")
    header_only_safetensors(path / "adapter_model.safetensors", {"lora_A": [8, 64]})
    header_only_safetensors(path / "extra.safetensors", {"lora_B": [64, 8]})
    (path / "sub").mkdir()
    header_only_safetensors(path / "sub" / "model.safetensors", {"other": [5]})

    assert get_source().snapshot("org/adapter").parameter_count == 1024


def test_corrupt_safetensors_header_leaves_the_count_unknown(model_root):
    path = make_model_repo(model_root, "org/model", weights="none")
    (path / "model.safetensors").write_bytes(struct.pack("<Q", 10**12) + b"{}")

    assert get_source().snapshot("org/model").parameter_count is None


def test_card_only_repository(model_root):
    path = model_root / "base" / "known-by-card"
    path.mkdir(parents=True)
    (path / "README.md").write_text(card_text({"license": "mit"}, "# Base\n"))

    snap = get_source().snapshot("base/known-by-card")

    assert snap.files == ["README.md"]
    assert snap.card_text == "---\nlicense: mit\n---\n# Base\n"
    assert snap.parameter_count is None
    assert snap.config is None
    assert snap.local_path == str(path)


def test_pickle_only_repository_is_listed_without_a_count(model_root):
    make_model_repo(model_root, "org/pickled", weights="bin")

    snap = get_source().snapshot("org/pickled")

    assert snap.files == ["README.md", "config.json", "pytorch_model.bin"]
    assert snap.parameter_count is None


def test_unparseable_config_is_listed_but_not_read(model_root):
    path = make_model_repo(model_root, "org/model")
    (path / "config.json").write_text("{not json")

    snap = get_source().snapshot("org/model")

    assert "config.json" in snap.files
    assert snap.config is None


def test_card_only_snapshot_skips_configs_and_weights(model_root):
    path = make_model_repo(model_root, "org/model")

    snap = get_source().snapshot("org/model", card_only=True)

    assert snap.card_text == (path / "README.md").read_text()
    assert (snap.config, snap.parameter_count) == (None, None)


def test_dataset_repositories_live_under_datasets(model_root):
    make_dataset_repo(model_root, "data-org/corpus")

    snap = get_source().snapshot("data-org/corpus", kind="dataset")

    assert snap.kind == "dataset"
    assert snap.files == ["README.md", "data.jsonl"]
    assert snap.parameter_count is None
    assert get_source().exists("data-org/corpus", "dataset") is True
    assert get_source().exists("data-org/corpus", "model") is False


def test_missing_repository(model_root):
    with pytest.raises(RepoNotFound) as excinfo:
        get_source().snapshot("org/absent")
    assert str(excinfo.value) == (
        f"model repository 'org/absent' not found under {model_root}/org/absent"
    )
    assert get_source().exists("org/absent") is False


@pytest.mark.parametrize(
    "repo_id",
    ["../outside", "org/..", "org/../../etc", "/etc/passwd", "org/a/b", "noslash", "org/", ""],
)
def test_repo_ids_that_could_leave_the_root_are_refused(model_root, repo_id):
    with pytest.raises(InvalidRepoId) as excinfo:
        get_source().snapshot(repo_id)
    assert "is not a repository id of the form <org>/<name>" in str(excinfo.value)
    assert get_source().exists(repo_id) is False


def test_symlink_out_of_the_root_is_refused(model_root, tmp_path):
    outside = make_model_repo(tmp_path / "elsewhere", "org/secret")
    (model_root / "org").mkdir()
    (model_root / "org" / "link").symlink_to(outside)

    with pytest.raises(InvalidRepoId) as excinfo:
        get_source().snapshot("org/link")
    assert str(excinfo.value) == "'org/link' resolves outside the model root"


def test_models_cannot_use_the_datasets_organisation(model_root):
    make_dataset_repo(model_root, "x/y")
    with pytest.raises(InvalidRepoId):
        get_source().snapshot("datasets/x")


# --- local: git repositories ---------------------------------------------------------------------


@pytest.fixture
def git_model(model_root) -> tuple[Path, str, str]:
    """A git repo with two commits: v1 (tagged) and v2 on the default branch."""
    path = make_model_repo(model_root, "org/gitmodel", card={"license": "mit"}, git=True)
    first = git(path, "rev-parse", "HEAD")
    git(path, "tag", "v1")
    (path / "README.md").write_text(card_text({"license": "apache-2.0"}, None, "v2"))
    (path / "model.safetensors").unlink()
    header_only_safetensors(path / "model.safetensors", {"w": [10, 10]})
    git(path, "add", "-A")
    git(path, "commit", "-qm", "v2")
    second = git(path, "rev-parse", "HEAD")
    return path, first, second


def test_git_repo_reads_files_at_the_requested_commit(git_model):
    _path, first, second = git_model
    source = get_source()

    old = source.snapshot("org/gitmodel", first)
    assert old.sha == first
    assert old.card_text is not None and old.card_text.startswith("---\nlicense: mit\n---\n")
    assert old.parameter_count == PARAMS

    new = source.snapshot("org/gitmodel")
    assert new.sha == second
    assert new.card_text is not None and new.card_text.startswith("---\nlicense: apache-2.0\n")
    assert new.parameter_count == 100


def test_git_revisions_resolve_through_git(git_model):
    path, first, second = git_model
    git(path, "branch", "-M", "trunk")
    source = get_source()

    assert source.snapshot("org/gitmodel", "v1").sha == first
    assert source.snapshot("org/gitmodel", first[:10]).sha == first
    assert source.snapshot("org/gitmodel", "trunk").sha == second
    # The Hub's default branch name means HEAD when the repo has no "main".
    assert source.snapshot("org/gitmodel", "main").sha == second
    git(path, "branch", "main", first)
    assert source.snapshot("org/gitmodel", "main").sha == first


def test_git_working_tree_changes_are_not_read(git_model):
    path, _first, second = git_model
    (path / "README.md").write_text("uncommitted edit")
    (path / "untracked.bin").write_bytes(b"pickle")

    snap = get_source().snapshot("org/gitmodel")

    assert snap.sha == second
    assert snap.card_text is not None and snap.card_text.startswith("---\nlicense: apache-2.0\n")
    assert snap.files == ["README.md", "config.json", "model.safetensors"]


@pytest.mark.parametrize("revision", ["v9", "0" * 40, "--output=/tmp/x", "HEAD~5"])
def test_unknown_git_revision(git_model, revision):
    with pytest.raises(RevisionNotFound):
        get_source().snapshot("org/gitmodel", revision)


def test_broken_git_repository_is_unavailable_not_a_bad_revision(model_root):
    path = make_model_repo(model_root, "org/broken")
    (path / ".git").write_text("gitdir: /nonexistent/worktree\n")

    with pytest.raises(SourceUnavailable) as excinfo:
        get_source().snapshot("org/broken")
    assert str(excinfo.value).startswith(f"git cannot read {path}: fatal: not a git repository")


# --- Hub -----------------------------------------------------------------------------------------


def weight_downloads(fake_hub) -> list[tuple[str, str, str | None]]:
    """Requests that fetched a weight file whole (a range read of its header is allowed)."""
    return [
        r for r in fake_hub.requests if r[1].endswith((".safetensors", ".bin")) and r[2] is None
    ]


def test_hub_snapshot(fake_hub):
    make_model_repo(
        fake_hub.root,
        "org/model",
        mergekit={"merge_method": "linear", "models": [{"model": "a/b"}]},
    )

    snap = get_source().snapshot("org/model")

    assert isinstance(get_source(), HubSource)
    assert snap.files == ["README.md", "config.json", "mergekit_config.yml", "model.safetensors"]
    assert snap.sha == fake_hub.repo("model", "org/model", None).sha
    assert snap.card_text == card_text(default_card("org/model"), None, "org/model")
    assert snap.config is not None and snap.config["model_type"] == "llama"
    assert snap.mergekit_config == {"merge_method": "linear", "models": [{"model": "a/b"}]}
    assert snap.adapter_config is None
    assert snap.parameter_count == PARAMS
    assert snap.tags == ["text-generation", "license:apache-2.0", "safetensors", "region:us"]
    assert snap.local_path is None
    assert weight_downloads(fake_hub) == []
    assert ("GET", f"/org/model/resolve/{snap.sha}/README.md", None) in fake_hub.requests


def test_hub_snapshot_at_a_pinned_revision(fake_hub):
    path = make_model_repo(fake_hub.root, "org/gitmodel", card={"license": "mit"}, git=True)
    first = git(path, "rev-parse", "HEAD")
    (path / "README.md").write_text(card_text({"license": "apache-2.0"}))
    git(path, "commit", "-qam", "v2")

    snap = get_source().snapshot("org/gitmodel", first)

    assert snap.sha == first
    assert snap.card_text is not None and snap.card_text.startswith("---\nlicense: mit\n")
    assert ("GET", f"/api/models/org/gitmodel/revision/{first}", None) in fake_hub.requests


def test_hub_counts_parameters_from_headers_when_the_api_does_not(fake_hub):
    sharded_repo(fake_hub.root, "org/sharded")
    fake_hub.without_safetensors_totals.add("org/sharded")

    snap = get_source().snapshot("org/sharded")

    assert snap.parameter_count == 1_000_000 + 3000 + 1
    assert weight_downloads(fake_hub) == []
    ranged = sorted(r[2] or "" for r in fake_hub.requests if r[1].endswith(".safetensors"))
    assert ranged[:2] == ["bytes=0-7", "bytes=0-7"]
    assert len(ranged) == 4


def test_hub_api_parameter_totals_are_used(fake_hub):
    sharded_repo(fake_hub.root, "org/sharded")

    assert get_source().snapshot("org/sharded").parameter_count == 1_000_000 + 3000 + 1
    assert [r for r in fake_hub.requests if r[1].endswith(".safetensors")] == []


def test_hub_card_only_repository(fake_hub):
    path = fake_hub.root / "base" / "card"
    path.mkdir(parents=True)
    (path / "README.md").write_text(card_text({"license": "mit"}, "# Base\n"))

    snap = get_source().snapshot("base/card")

    assert (snap.files, snap.parameter_count, snap.config) == (["README.md"], None, None)
    assert snap.card_text == "---\nlicense: mit\n---\n# Base\n"


def test_hub_dataset(fake_hub):
    make_dataset_repo(fake_hub.root, "data-org/corpus")

    snap = get_source().snapshot("data-org/corpus", kind="dataset")

    assert snap.files == ["README.md", "data.jsonl"]
    assert snap.card_text is not None and "license: cc-by-4.0" in snap.card_text
    assert ("GET", "/api/datasets/data-org/corpus", None) in fake_hub.requests
    assert get_source().exists("data-org/corpus", "dataset") is True
    assert get_source().exists("data-org/corpus", "model") is False


def test_hub_missing_repository(fake_hub):
    with pytest.raises(RepoNotFound) as excinfo:
        get_source().snapshot("org/absent")
    assert str(excinfo.value) == (
        "model org/absent was not found on the Hub (if it is private, set HF_TOKEN to a token "
        "that can read it)"
    )
    assert get_source().exists("org/absent") is False


def test_hub_bad_revision(fake_hub):
    make_model_repo(fake_hub.root, "org/model")
    with pytest.raises(RevisionNotFound) as excinfo:
        get_source().snapshot("org/model", "no-such-branch")
    assert str(excinfo.value) == (
        "revision 'no-such-branch' not found in org/model: use a branch, tag or commit sha that "
        "exists there"
    )


def test_hub_invalid_repo_id(fake_hub):
    with pytest.raises(InvalidRepoId):
        get_source().snapshot("org/a/b")
    assert fake_hub.requests == []


def test_hub_gated_repository(fake_hub, settings):
    path = make_model_repo(fake_hub.root, "meta/gated")
    fake_hub.guard("meta/gated", gated="manual", tokens={"hf_granted"})
    from leaderboard.catalog.sources import _source_for

    with pytest.raises(RepoAccessDenied) as excinfo:
        get_source().snapshot("meta/gated")
    assert str(excinfo.value) == (
        "model meta/gated is gated on the Hub and the configured token has no access: request "
        "access on its Hub page for the account whose token is in HF_TOKEN"
    )
    # Its card is public, as on the Hub: lineage resolution can still read it.
    card = (path / "README.md").read_text()
    assert get_source().snapshot("meta/gated", card_only=True).card_text == card
    assert get_source().exists("meta/gated") is True

    settings.HF_TOKEN = "hf_granted"
    _source_for.cache_clear()
    assert get_source().snapshot("meta/gated").parameter_count == PARAMS


def test_hub_gated_repository_without_small_files_is_still_refused(fake_hub):
    """Only the weights are behind the gate: access is asked for, not inferred from a file."""
    path = make_model_repo(fake_hub.root, "meta/weights-only")
    (path / "config.json").unlink()
    fake_hub.guard("meta/weights-only", gated="auto")

    with pytest.raises(RepoAccessDenied):
        get_source().snapshot("meta/weights-only")
    assert ("GET", "/api/models/meta/weights-only/auth-check", None) in fake_hub.requests


def test_hub_private_repository_needs_a_token(fake_hub, settings):
    path = make_model_repo(fake_hub.root, "corp/private")
    fake_hub.guard("corp/private", private=True, tokens={"hf_reader"})
    from leaderboard.catalog.sources import _source_for

    with pytest.raises(RepoNotFound) as excinfo:
        get_source().snapshot("corp/private")
    assert "if it is private, set HF_TOKEN" in str(excinfo.value)

    settings.HF_TOKEN = "hf_reader"
    _source_for.cache_clear()
    assert get_source().snapshot("corp/private").card_text == (path / "README.md").read_text()


def test_hub_server_error_is_unavailable(fake_hub):
    make_model_repo(fake_hub.root, "org/model")
    fake_hub.fail_status = 500

    with pytest.raises(SourceUnavailable) as excinfo:
        get_source().snapshot("org/model")
    assert str(excinfo.value).startswith(f"the Hub at {fake_hub.url} could not answer: ")


def test_hub_down_is_unavailable(fake_hub):
    source = get_source()
    fake_hub.stop()

    with pytest.raises(SourceUnavailable) as excinfo:
        source.snapshot("org/model")
    assert str(excinfo.value).startswith(f"the Hub at {fake_hub.url} could not answer: ")
    with pytest.raises(SourceUnavailable):
        source.exists("org/model")


def test_hub_that_stalls_times_out_as_unavailable(fake_hub, settings):
    from leaderboard.catalog.sources import _source_for

    settings.TRELLIS_HUB_TIMEOUT = 0.2
    _source_for.cache_clear()
    fake_hub.delay = 1.0

    with pytest.raises(SourceUnavailable) as excinfo:
        get_source().snapshot("org/model")
    assert str(excinfo.value).startswith(f"the Hub at {fake_hub.url} could not answer: ")


def test_hub_offline_mode_is_explained(fake_hub, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    with pytest.raises(SourceUnavailable) as excinfo:
        get_source().snapshot("org/model")
    assert str(excinfo.value) == (
        "huggingface_hub is in offline mode (HF_HUB_OFFLINE is set): unset it to use the Hub "
        "source, or set TRELLIS_MODEL_SOURCE=local"
    )
    assert fake_hub.requests == []


def test_fake_hub_serves_hf_hub_download(fake_hub, tmp_path):
    """The resolve route carries the headers huggingface_hub's downloader relies on."""
    path = make_model_repo(fake_hub.root, "org/model")

    downloaded = hf_hub_download("org/model", "config.json", cache_dir=tmp_path / "cache")

    assert Path(downloaded).read_bytes() == (path / "config.json").read_bytes()
