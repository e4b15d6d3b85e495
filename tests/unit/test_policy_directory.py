"""A policy directory checked as the server loads it, by the server and by `moderation policy validate` alike."""

from __future__ import annotations

from pathlib import Path

import pytest
from moderation.policy import PolicyFileError
from moderation.policy.directory import Baseline, ModelRule, PolicyVersion, check_policy_dir, policy_files
from moderation.policy.registry import PolicyRegistry
from tests.policies import one_category_yaml



def policy(policy_id: str = "p", version: str = "1", extra: str = "") -> str:
    return one_category_yaml(version, policy_id) + extra


def problems_of(directory: Path, **kwargs: object) -> list[str]:
    with pytest.raises(PolicyFileError) as caught:
        check_policy_dir(directory, **kwargs)
    return [str(p) for p in caught.value.problems]


# -- symbolic links ---------------------------------------------------------------


def test_a_link_leaving_the_directory_is_refused_without_reading_it(tmp_path: Path) -> None:
    policies, outside = tmp_path / "policies", tmp_path / "elsewhere"
    policies.mkdir()
    outside.mkdir()
    (policies / "default.yaml").write_text(policy())
    secret = outside / "shadow.yaml"
    secret.write_text("root:$6$secret-hash-line:19000:0:99999:7:::\n")
    (policies / "passwords.yaml").symlink_to(secret)
    (outside / "real.yaml").write_text(policy("other"))
    (policies / "other.yaml").symlink_to(Path("..") / "elsewhere" / "real.yaml")  # relative, still outside

    problems = problems_of(policies)
    assert len(problems) == 2
    for name, problem in zip(("other.yaml", "passwords.yaml"), problems, strict=True):
        assert problem.startswith(f"{policies / name}: is a link to a file outside the policy directory")
    text = "\n".join(problems)
    assert "secret-hash-line" not in text and "root:" not in text and str(outside) not in text
    with pytest.raises(PolicyFileError):
        policy_files(policies)


def test_configmap_links_inside_the_directory_keep_working(tmp_path: Path) -> None:
    # The kubelet's layout: ..<timestamp>/ holds the files, ..data links to it, and
    # each top-level name links through ..data.
    data = tmp_path / "..2026_11_23_10_00_00.123456789"
    data.mkdir()
    (data / "default.yaml").write_text(policy("default", "7"))
    (tmp_path / "..data").symlink_to(data.name)
    (tmp_path / "default.yaml").symlink_to(Path("..data") / "default.yaml")

    (loaded,) = check_policy_dir(tmp_path).policies
    assert (loaded.policy.id, loaded.policy.version, loaded.path) == ("default", "7", tmp_path / "default.yaml")
    # The directory itself may be reached through a link, too.
    (tmp_path.parent / f"{tmp_path.name}-link").symlink_to(tmp_path)
    assert [p.policy.id for p in check_policy_dir(tmp_path.parent / f"{tmp_path.name}-link").policies] == ["default"]


# -- one check for server and validate ----------------------------------------------


def test_every_directory_problem_with_its_file_and_line_in_one_run(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(policy("a", extra="default: true\n"))
    (tmp_path / "b.yaml").write_text(policy("b", extra="default: true\n"))
    (tmp_path / "c.yaml").write_text(policy("c", extra="mode: shadow\nshadow_of: missing\n"))
    (tmp_path / "d.yaml").write_text(policy("a"))
    (tmp_path / "e.yaml").write_text(policy("e").replace("review: 0.3", "review: lots"))
    problems = problems_of(tmp_path)
    assert f"{tmp_path / 'b.yaml'}:9: default: more than one policy is marked default: {tmp_path / 'a.yaml'}, {tmp_path / 'b.yaml'}" in problems
    assert f"{tmp_path / 'c.yaml'}:10: shadow_of: no active policy 'missing' in {tmp_path}" in problems
    assert f"{tmp_path / 'd.yaml'}:1: id: policy id 'a' is also used by {tmp_path / 'a.yaml'}" in problems
    assert any(p.startswith(f"{tmp_path / 'e.yaml'}:8: categories[weapons].thresholds.review: must be a number") for p in problems)
    assert len(problems) == 4


def test_a_shadow_of_a_broken_file_is_not_blamed_twice(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(policy("a").replace("review: 0.3", "review: lots"))
    (tmp_path / "b.yaml").write_text(policy("b", extra="mode: shadow\nshadow_of: a\n"))
    (problem,) = problems_of(tmp_path)
    assert "a.yaml" in problem and "thresholds.review" in problem


def test_a_file_over_the_size_limit_is_refused_without_being_parsed(tmp_path: Path) -> None:
    """Issue 18: a 5 MB file was parsed in full (43 s, +825 MB) to guess its id after it was refused."""
    import tracemalloc

    filler = "".join(f"  - {{name: n{i}, weight: {i}, tags: [a, b, c]}}\n" for i in range(120_000))
    (tmp_path / "a.yaml").write_text(policy("a", extra="notes:\n" + filler))
    assert (tmp_path / "a.yaml").stat().st_size > 5_000_000
    (tmp_path / "b.yaml").write_text(policy("b", extra="mode: shadow\nshadow_of: a\n"))
    tracemalloc.start()
    try:
        (problem,) = problems_of(tmp_path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "a.yaml" in problem and "a policy must be under 1000000" in problem
    # Parsing it builds ~120k dicts (hundreds of MB); reading 64 KB for its id does not.
    assert peak < 20_000_000, f"peak {peak:,} bytes: the oversized file was parsed"


def test_version_and_model_rules_are_the_servers(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(policy(extra="model: ViT-B-32/laion2b_s34b_b79k\n"))
    served = check_policy_dir(tmp_path).policies[0]
    changed = policy(extra="model: ViT-B-32/laion2b_s34b_b79k\n").replace("review: 0.3", "review: 0.2")
    (tmp_path / "p.yaml").write_text(changed)
    baseline = Baseline({"p": PolicyVersion("1", served.content_sha256)}, "as served at host:1")
    problems = problems_of(tmp_path, model=ModelRule("ViT-L-14/openai"), baselines=[baseline])
    assert problems == [
        f"{tmp_path / 'p.yaml'}:2: version: policy 'p' changed but its version is still '1' (as served at host:1); "
        "bump the version so every decision names the rules it used",
        f"{tmp_path / 'p.yaml'}:9: model: thresholds were calibrated for model 'ViT-B-32/laion2b_s34b_b79k' but the server "
        "runs 'ViT-L-14/openai'; recalibrate or change the server's model",
    ]
    # Comments and layout are not content; random weights only warn about the model.
    (tmp_path / "p.yaml").write_text("# a comment\n" + policy(extra="model:   ViT-B-32/laion2b_s34b_b79k\n"))
    checked = check_policy_dir(tmp_path, model=ModelRule("ViT-L-14/random", random_weights=True), baselines=[baseline])
    assert [str(w) for w in checked.warnings] == [
        f"{tmp_path / 'p.yaml'}:10: model: thresholds were calibrated for model 'ViT-B-32/laion2b_s34b_b79k' but the server "
        "runs 'ViT-L-14/random' (ignored: random weights mean nothing anyway)"
    ]


def test_the_server_refuses_what_validate_refuses(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(policy())
    registry = PolicyRegistry(lambda p, should_stop: p.version, model_id="m")
    registry.load_directory(tmp_path)
    (tmp_path / "p.yaml").write_text(policy().replace("a gun", "a rifle"))
    with pytest.raises(PolicyFileError) as caught:
        registry.load_directory(tmp_path)
    assert [str(p) for p in caught.value.problems] == [
        f"{tmp_path / 'p.yaml'}:2: version: policy 'p' changed but its version is still '1'; "
        "bump the version so every decision names the rules it used"
    ]
    assert registry.get().compiled == "1"


# -- the registry: what a reload compiles, which policy is the default (docs/policies.md) ----------


def counting_compiler(calls: list[str]):  # noqa: ANN201
    """A compile function as the server passes one (registry.py: `compile_policy(policy, should_stop)`), recording its calls."""

    def compile_policy(p, should_stop):  # noqa: ANN001, ANN202
        calls.append(f"{p.id}@{p.version}")
        return f"compiled {p.id}@{p.version}"

    return compile_policy


def test_a_reload_compiles_only_the_policies_whose_content_changed(tmp_path: Path) -> None:
    import dataclasses

    names = ["a", "b", "c", "d", "e"]
    for name in names:
        (tmp_path / f"{name}.yaml").write_text(policy(name, "1", "default: true\n" if name == "a" else ""))
    calls: list[str] = []
    registry = PolicyRegistry(counting_compiler(calls), model_id="m", random_weights=True)
    assert (registry.model_id, registry.random_weights, registry.default_id) == ("m", True, None)
    first = registry.load_directory(tmp_path)
    assert first.compiled == tuple(f"{n}@1" for n in names) and first.served == first.compiled and first.removed == ()
    assert calls == list(first.compiled) and registry.default_id == "a"
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.removed = ("a",)  # type: ignore[misc]

    # Unchanged (a comment is not content): nothing compiled, every policy still served with its compiled form.
    (tmp_path / "b.yaml").write_text("# reviewed\n" + policy("b", "1"))
    again = registry.load_directory(tmp_path)
    assert again.compiled == () and again.served == first.served and calls == list(first.compiled)
    assert [s.compiled for s in registry.all()] == [f"compiled {n}@1" for n in names]
    served = registry.get("b")
    assert served.source_text.startswith("# reviewed") and served.content_sha256 == registry.get("b").content_sha256
    with pytest.raises(dataclasses.FrozenInstanceError):
        served.compiled = "other"  # type: ignore[misc]

    # Every policy but one changed (version bumped): those are compiled again, in directory order.
    for name in names[1:]:
        (tmp_path / f"{name}.yaml").write_text(policy(name, "2").replace("a gun", f"a gun ({name})"))
    changed = registry.load_directory(tmp_path)
    assert changed.compiled == tuple(f"{n}@2" for n in names[1:])
    assert calls == [*first.compiled, *changed.compiled]
    assert [s.compiled for s in registry.all()] == ["compiled a@1", *(f"compiled {n}@2" for n in names[1:])]

    (tmp_path / "e.yaml").unlink()
    assert registry.load_directory(tmp_path).removed == ("e",)


def test_the_default_is_the_marked_policy_or_the_only_active_one(tmp_path: Path) -> None:
    from moderation.policy.registry import PolicyNotFound

    registry = PolicyRegistry(counting_compiler([]), model_id=None)
    registry.replace_all([])
    assert registry.default_id is None
    with pytest.raises(PolicyNotFound, match="served policies: none"):
        registry.get()

    (tmp_path / "only.yaml").write_text(policy("only"))
    registry.load_directory(tmp_path)
    assert registry.default_id == "only" and registry.get().policy.id == "only"

    (tmp_path / "second.yaml").write_text(policy("second"))  # two active, none marked: no default
    registry.load_directory(tmp_path)
    assert registry.default_id is None
    with pytest.raises(PolicyNotFound) as caught:
        registry.get()
    assert str(caught.value) == "no policy '(default)' is served; served policies: only, second"
    assert registry.get("second").policy.id == "second"


def test_a_compile_stopped_through_its_control_names_the_policy_and_the_reason(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from moderation.policy.compile import CompileCancelled, CompileControl

    (tmp_path / "p.yaml").write_text(policy(extra="model: ViT-B-32/laion2b_s34b_b79k\n"))
    control = CompileControl()

    def cancelled_midway(p, should_stop):  # noqa: ANN001, ANN202
        control.cancel("a newer edit")
        assert should_stop()
        raise CompileCancelled("stopped between chunks")

    registry = PolicyRegistry(cancelled_midway, model_id="ViT-L-14/random", random_weights=True)
    with caplog.at_level("WARNING", logger="moderation.policy.registry"), pytest.raises(CompileCancelled) as caught:
        registry.load_directory(tmp_path, control)
    assert str(caught.value).startswith("p@1: ") and "a newer edit" in str(caught.value)
    assert registry.all() == []  # nothing swapped in
    # The directory's warnings are logged as it is loaded (random weights: the model rule only warns).
    assert any("ignored: random weights mean nothing anyway" in r.getMessage() for r in caplog.records)

    def not_stopped(p, should_stop):  # noqa: ANN001, ANN202
        raise CompileCancelled("the compiler's own reason")

    with pytest.raises(CompileCancelled, match="^the compiler's own reason$"):
        PolicyRegistry(not_stopped, model_id=None).load_directory(tmp_path, CompileControl())


# -- the directory's rules, case by case (docs/policies.md "limits", "validate") ---------------------


def test_a_directory_holds_at_most_32_policy_files(tmp_path: Path) -> None:
    for i in range(32):
        (tmp_path / f"p{i:02d}.yaml").write_text(policy(f"p{i:02d}"))
    assert len(check_policy_dir(tmp_path).policies) == 32
    (tmp_path / "p32.yaml").write_text(policy("p32"))
    assert problems_of(tmp_path) == [f"{tmp_path}: 33 policy files; a directory may hold at most 32 (limit MAX_POLICY_FILES, docs/policies.md#limits)"]


def test_an_empty_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a policy")
    assert problems_of(tmp_path) == [f"{tmp_path}: no *.yaml policy files found"]


def test_only_visible_yaml_files_are_read_and_links_to_nothing_are_passed_over(tmp_path: Path) -> None:
    (tmp_path / "a-gone.yaml").symlink_to(tmp_path / "removed.yaml")  # dangling, inside, listed first
    (tmp_path / "b-gone.yaml").symlink_to(tmp_path.parent / "nowhere" / "removed.yaml")  # dangling, outside
    (tmp_path / "c-loop.yaml").symlink_to(tmp_path / "d-loop.yaml")
    (tmp_path / "d-loop.yaml").symlink_to(tmp_path / "c-loop.yaml")
    (tmp_path / "notes.txt").write_text("id: notes\n")
    (tmp_path / ".hidden.yaml").write_text("id: [broken\n")
    (tmp_path / "p.yaml").write_text(policy())
    checked = check_policy_dir(tmp_path)
    assert [(p.policy.id, p.path) for p in checked.policies] == [("p", tmp_path / "p.yaml")] and checked.warnings == []


def test_a_shadow_of_a_file_whose_yaml_is_broken_is_not_blamed(tmp_path: Path) -> None:
    (tmp_path / "main.yaml").write_text("id: main\nversion: '1'\nbenign: [unclosed\n")
    (tmp_path / "shadow.yaml").write_text(policy("trial", extra="mode: shadow\nshadow_of: main\n"))
    problems = problems_of(tmp_path)
    assert problems and all(p.startswith(str(tmp_path / "main.yaml")) for p in problems), problems


def test_the_model_rule_compares_ids_as_documented(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(policy(extra="model: ViT-B-32/laion2b_s34b_b79k\n"))
    checked = check_policy_dir(tmp_path, model=ModelRule(" vit-b-32/LAION2B_s34b_b79k "))  # case and spaces do not count
    assert len(checked.policies) == 1 and checked.warnings == []


def test_the_version_rule_applies_only_to_changed_content_under_the_same_version(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(policy("a", "1.0"))
    (tmp_path / "b.yaml").write_text(policy("b", "1.0"))
    served = {p.policy.id: p.content_sha256 for p in check_policy_dir(tmp_path).policies}
    (tmp_path / "b.yaml").write_text(policy("b", "1.0").replace("a gun", "a rifle"))
    same_version = Baseline({i: PolicyVersion("".join(["1", ".0"]), sha) for i, sha in served.items()})  # a string of its own
    assert problems_of(tmp_path, baselines=[same_version]) == [
        f"{tmp_path / 'b.yaml'}:2: version: policy 'b' changed but its version is still '1.0'; "
        "bump the version so every decision names the rules it used"
    ]
    # Served at a higher version than the file's: a different version, not this rule's concern.
    newer = Baseline({i: PolicyVersion("2.0", sha) for i, sha in served.items()})
    assert len(check_policy_dir(tmp_path, baselines=[newer]).policies) == 2


def test_previous_versions_reads_a_directory_or_a_file_and_reports_what_it_cannot_compare(tmp_path: Path) -> None:
    from moderation.policy.directory import previous_versions

    (tmp_path / "a-broken.yaml").write_text("id: x\nversion: [\n")
    (tmp_path / "b.yaml").write_text(policy("b", "3"))
    (tmp_path / "c.yaml").write_text(policy("c", "4"))
    versions, problems = previous_versions(tmp_path)
    assert {i: v.version for i, v in versions.items()} == {"b": "3", "c": "4"}
    assert len(problems) == 1 and problems[0].path == str(tmp_path / "a-broken.yaml")
    one, none = previous_versions(tmp_path / "c.yaml")
    assert {i: v.version for i, v in one.items()} == {"c": "4"} and none == []


def test_validate_checks_each_directory_once_and_names_files_the_server_would_not_load(tmp_path: Path) -> None:
    from moderation.policy.directory import directories_to_check

    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    for name in ("p.yaml", "notes.txt", ".hidden.yaml"):
        (second / name).write_text(policy())
    paths = [first, second / "p.yaml", tmp_path / "missing.yaml", second / "notes.txt", second / ".hidden.yaml", first]
    directories, problems = directories_to_check(paths)
    assert directories == [first, second]
    assert [(p.path, p.message.split(":")[0]) for p in problems] == [
        (str(tmp_path / "missing.yaml"), "no such file or directory"),
        (str(second / "notes.txt"), "the server does not load this file"),
        (str(second / ".hidden.yaml"), "the server does not load this file"),
    ]


def test_the_directory_values_are_immutable(tmp_path: Path) -> None:
    import dataclasses

    (tmp_path / "p.yaml").write_text(policy())
    checked = check_policy_dir(tmp_path)
    version = PolicyVersion("1", checked.policies[0].content_sha256)
    for value, field in ((checked, "warnings"), (checked.policies[0], "text"), (version, "version"), (Baseline({"p": version}), "where"), (ModelRule("m"), "model_id")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(value, field, None)
