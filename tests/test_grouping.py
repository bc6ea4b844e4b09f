"""`make test` runs each unit of work (a file; tests/isolation as one) on one xdist worker,
so that its module-scoped servers start once: tests/conftest.py marks each test with its
unit's `xdist_group`, and pytest-xdist's `--dist loadgroup` keeps a group together by
suffixing the node id with `@group`. When that breaks, nothing fails: the tests just spread
over every worker and the suite costs a server start-up per worker per file (seen with
pytest 9.2, pytest-dev/pytest-xdist#1386). This test is what fails then."""

from __future__ import annotations

import pytest

from tests.scheduling import mentions_alone, rank


def test_this_file_runs_as_one_group(request: pytest.FixtureRequest) -> None:
    if not getattr(request.config.option, "loadgroup", False):
        pytest.skip("not run by an xdist worker with --dist loadgroup (make test's first part)")
    assert request.node.nodeid.endswith("@tests/test_grouping.py"), (
        f"{request.node.nodeid!r} carries no xdist group: pytest-xdist's loadgroup no longer "
        "groups with this pytest; see pyproject.toml"
    )


def test_the_slowest_units_are_handed_out_first(request: pytest.FixtureRequest) -> None:
    """The session's order, which pytest-xdist hands units out in, follows SLOW_FIRST
    whatever other plugins did to it (pytest-django sorts by database use)."""
    ranks = [rank(item) for item in request.session.items]
    late = next((i for i in range(1, len(ranks)) if ranks[i] < ranks[i - 1]), None)
    assert late is None, (
        f"{request.session.items[late].nodeid} (rank {ranks[late]}) comes after "
        f"{request.session.items[late - 1].nodeid} (rank {ranks[late - 1]})"
    )


def test_alone_collects_only_files_that_name_the_mark(tmp_path) -> None:
    """`-m alone` skips importing a test file unless it names the mark; a file that only
    says the word in prose is skipped (importing every such file cost the part seconds)."""
    marked = tmp_path / "test_marked.py"
    marked.write_text("import pytest\n\npytestmark = pytest.mark.alone\n")
    prose = tmp_path / "test_prose.py"
    prose.write_text('"""This test runs alone on its own server."""\n')
    assert mentions_alone(marked)
    assert not mentions_alone(prose)
