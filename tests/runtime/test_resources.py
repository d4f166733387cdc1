"""Hierarchical resource keys: a key covers everything below it.

``repo`` ⊇ ``repo/src`` ⊇ ``repo/src/a.py``; siblings and look-alike prefixes never overlap.
The bundled coding example relies on it: ``run_tests`` reads ``repo`` and waits for a patch
to ``repo/<path>``.
"""

from __future__ import annotations

from hotloop.runtime import Admission, CallEffects
from hotloop.runtime.scheduler import covers, overlap


def test_a_key_covers_itself_and_its_descendants_only() -> None:
    assert covers("repo", "repo") and covers("repo", "repo/src/a.py")
    assert covers("repo/src", "repo/src/a.py")
    assert not covers("repo/src", "repo/srcs/a.py")  # a look-alike prefix is not a parent
    assert not covers("repo/src/a.py", "repo/src")
    assert not covers("repo/a", "repo/b")
    # A trailing slash names the same level: what is below it is covered.
    assert covers("repo/src/", "repo/src/a.py") and covers("repo/src", "repo/src/")
    assert not covers("repo/src/", "repo/srcs/a.py") and not covers("", "repo")


def test_overlap_is_symmetric_and_exact_where_keys_are_flat() -> None:
    assert overlap(frozenset({"repo"}), frozenset({"repo/src/a.py"}))
    assert overlap(frozenset({"repo/src/a.py"}), frozenset({"repo"}))
    assert not overlap(frozenset({"order:1"}), frozenset({"order:12"}))
    assert not overlap(frozenset(), frozenset({"repo"}))


def test_reading_the_repository_waits_for_a_write_below_it() -> None:
    admission = Admission()
    patch = admission.submit(CallEffects(writes=frozenset({"repo/src/a.py"})))
    tests = admission.submit(CallEffects(reads=frozenset({"repo"})))
    other = admission.submit(CallEffects(reads=frozenset({"docs/readme.md"})))
    assert admission.ready() == [patch, other]  # the test run waits for the patch
    admission.finish(patch)
    assert admission.ready() == [tests]


def test_writes_to_different_files_overlap_and_a_directory_read_waits_for_both() -> None:
    admission = Admission()
    first = admission.submit(CallEffects(writes=frozenset({"repo/src/a.py"})))
    second = admission.submit(CallEffects(writes=frozenset({"repo/src/b.py"})))
    listing = admission.submit(CallEffects(reads=frozenset({"repo/src"})))
    assert admission.ready() == [first, second]
    admission.finish(first)
    assert admission.ready() == []
    admission.finish(second)
    assert admission.ready() == [listing]
