"""Unit tests for twisted_statsd.core.mapper: DogStatsD's metric mapper (spec §5).

The spec's vectors (§5.5, taken from DogStatsD's mapper_test.go and
mapper_cache_test.go) come first, configured through YAML as an operator
writes it, then the validation messages of §5.2, Go's template expansion,
regex semantics and syntax, profile selection, first-match-wins, the LRU
cache and non-UTF-8 names.  Plain pytest: the mapper is pure.
"""

from __future__ import annotations

import re
import textwrap
from types import MappingProxyType

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from twisted_statsd.core.mapper import MapperConfigError, MetricMapper


def mapper(config: str, cache_size: int = 1000) -> MetricMapper:
    """A mapper from the YAML of ``dogstatsd_mapper_profiles``, as the config file holds it."""
    loaded = yaml.safe_load(textwrap.dedent(config))
    return MetricMapper(loaded["dogstatsd_mapper_profiles"], cache_size)


def one(
    match: str, name: str, tags: dict | None = None, match_type: str = "wildcard", prefix: str = "test."
) -> MetricMapper:
    """A mapper with a single mapping, built from Python values."""
    mapping = {"match": match, "match_type": match_type, "name": name, "tags": tags or {}}
    return MetricMapper([{"name": "test", "prefix": prefix, "mappings": [mapping]}])


# -- spec §5.5: mapping vectors ------------------------------------------------------------

SIMPLE = """
    dogstatsd_mapper_profiles:
      - name: test
        prefix: 'test.'
        mappings:
          - match: "test.job.duration.*.*"
            name: "test.job.duration"
            tags:
              job_type: "$1"
              job_name: "$2"
          - match: "test.job.size.*.*"
            name: "test.job.size"
            tags:
              foo: "$1"
              bar: "$2"
"""

SCENARIOS = {
    "simple": (
        SIMPLE,
        [
            (
                b"test.job.duration.my_job_type.my_job_name",
                b"test.job.duration",
                [b"job_type:my_job_type", b"job_name:my_job_name"],
            ),
            (b"test.job.size.my_job_type.my_job_name", b"test.job.size", [b"foo:my_job_type", b"bar:my_job_name"]),
            (b"test.job.size.not_match", None, None),
        ],
    ),
    "partial tags": (
        """
        dogstatsd_mapper_profiles:
          - name: test
            prefix: 'test.'
            mappings:
              - match: "test.job.duration.*.*"
                name: "test.job.duration"
                tags:
                  job_type: "$1"
              - match: "test.task.duration.*.*"
                name: "test.task.duration"
        """,
        [
            (b"test.job.duration.my_job_type.my_job_name", b"test.job.duration", [b"job_type:my_job_type"]),
            (b"test.task.duration.my_job_type.my_job_name", b"test.task.duration", []),
        ],
    ),
    "braced expansion": (
        """
        dogstatsd_mapper_profiles:
         - name: test
           prefix: 'test.'
           mappings:
            - match: "test.job.duration.*.*"
              name: "test.job.duration"
              tags:
                job_type: "${1}_x"
                job_name: "${2}_y"
        """,
        [
            (
                b"test.job.duration.my_job_type.my_job_name",
                b"test.job.duration",
                [b"job_type:my_job_type_x", b"job_name:my_job_name_y"],
            )
        ],
    ),
    "expand name": (
        """
        dogstatsd_mapper_profiles:
         - name: test
           prefix: 'test.'
           mappings:
            - match: "test.job.duration.*.*"
              name: "test.hello.$2.$1"
              tags:
                job_type: "$1"
                job_name: "$2"
        """,
        [
            (
                b"test.job.duration.my_job_type.my_job_name",
                b"test.hello.my_job_name.my_job_type",
                [b"job_type:my_job_type", b"job_name:my_job_name"],
            )
        ],
    ),
    "match before underscore": (
        """
        dogstatsd_mapper_profiles:
         - name: test
           prefix: 'test.'
           mappings:
            - match: "test.*_start"
              name: "test.start"
              tags:
                job: "$1"
        """,
        [(b"test.my_job_start", b"test.start", [b"job:my_job"])],
    ),
    "no tags": (
        """
        dogstatsd_mapper_profiles:
         - name: test
           prefix: 'test.'
           mappings:
            - match: "test.my-worker.start"
              name: "test.worker.start"
            - match: "test.my-worker.stop.*"
              name: "test.worker.stop"
        """,
        [
            (b"test.my-worker.start", b"test.worker.start", []),
            (b"test.my-worker.stop.worker-name", b"test.worker.stop", []),
        ],
    ),
    "all allowed characters": (
        """
        dogstatsd_mapper_profiles:
         - name: test
           prefix: 'test.'
           mappings:
            - match: "test.abcdefghijklmnopqrstuvwxyz_ABCDEFGHIJKLMNOPQRSTUVWXYZ-01234567.*"
              name: "test.alphabet"
        """,
        [(b"test.abcdefghijklmnopqrstuvwxyz_ABCDEFGHIJKLMNOPQRSTUVWXYZ-01234567.123", b"test.alphabet", [])],
    ),
    "regex": (
        r"""
        dogstatsd_mapper_profiles:
         - name: test
           prefix: 'test.'
           mappings:
            - match: "test\\.job\\.duration\\.(.*)"
              match_type: regex
              name: "test.job.duration"
              tags:
                job_name: "$1"
            - match: 'test\.task\.duration\.(.*)'
              match_type: regex
              name: "test.task.duration"
              tags:
                task_name: "$1"
        """,
        [
            (
                b"test.job.duration.my.funky.job$name-abc/123",
                b"test.job.duration",
                [b"job_name:my.funky.job$name-abc/123"],
            ),
            (b"test.task.duration.MY_task_name", b"test.task.duration", [b"task_name:MY_task_name"]),
        ],
    ),
    "complex regex": (
        r"""
        dogstatsd_mapper_profiles:
          - name: test
            prefix: 'test.'
            mappings:
              - match: "test\\.job\\.([a-z][0-9]-\\w+)\\.(.*)"
                match_type: regex
                name: "test.job"
                tags:
                  job_type: "$1"
                  job_name: "$2"
        """,
        [
            (b"test.job.a5-foo.bar", b"test.job", [b"job_type:a5-foo", b"job_name:bar"]),
            (b"test.job.foo.bar-not-match", None, None),
        ],
    ),
    "profile and prefix": (
        """
        dogstatsd_mapper_profiles:
          - name: test
            prefix: 'foo.'
            mappings:
              - match: "foo.duration.*"
                name: "foo.duration"
                tags:
                  name: "$1"
          - name: test
            prefix: 'bar.'
            mappings:
              - match: "bar.count.*"
                name: "bar.count"
                tags:
                  name: "$1"
              - match: "foo.duration2.*"
                name: "foo.duration2"
                tags:
                  name: "$1"
        """,
        [
            (b"foo.duration.foo_name1", b"foo.duration", [b"name:foo_name1"]),
            (b"foo.duration2.foo_name1", None, None),  # profile bar. does not apply; foo. has no rule for it
            (b"bar.count.bar_name1", b"bar.count", [b"name:bar_name1"]),
            (b"z.not.mapped", None, None),
        ],
    ),
    "wildcard prefix": (
        """
        dogstatsd_mapper_profiles:
          - name: test
            prefix: '*'
            mappings:
              - match: "foo.duration.*"
                name: "foo.duration"
                tags:
                  name: "$1"
        """,
        [(b"foo.duration.foo_name1", b"foo.duration", [b"name:foo_name1"])],
    ),
    "wildcard prefix order": (
        """
        dogstatsd_mapper_profiles:
          - name: test
            prefix: '*'
            mappings:
              - match: "foo.duration.*"
                name: "foo.duration"
                tags:
                  name1: "$1"
          - name: test
            prefix: '*'
            mappings:
              - match: "foo.duration.*"
                name: "foo.duration"
                tags:
                  name2: "$1"
        """,
        [(b"foo.duration.foo_name", b"foo.duration", [b"name1:foo_name"])],
    ),
    "multiple profiles order": (
        """
        dogstatsd_mapper_profiles:
          - name: test
            prefix: 'foo.'
            mappings:
              - match: "foo.*.duration.*"
                name: "foo.bar1.duration"
                tags:
                  bar: "$1"
                  foo: "$2"
          - name: test
            prefix: 'foo.bar.'
            mappings:
              - match: "foo.bar.duration.*"
                name: "foo.bar2.duration"
                tags:
                  foo_bar: "$1"
        """,
        [(b"foo.bar.duration.foo_name", b"foo.bar1.duration", [b"bar:bar", b"foo:foo_name"])],
    ),
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))  # spec §5.5
def test_spec_vectors(scenario):
    """spec §5.5: every mapping vector; tags come in the mapping's declared order."""
    config, cases = SCENARIOS[scenario]
    m = mapper(config)
    for name, new_name, tags in cases:
        expected = None if new_name is None else (new_name, tuple(tags))
        assert m.map(name) == expected, name


def test_spec_cache_vector():  # spec §5.5
    """spec §5.5: 3 hits and 2 misses make 5 entries, and a cached miss is still "not matched"."""
    m = mapper(SIMPLE, cache_size=10)
    for name in (b"test.job.size.a.1", b"test.job.size.a.2", b"test.job.size.a.3", b"test.miss1", b"test.miss2"):
        m.map(name)
    assert m.cache_info().currsize == 5
    assert m.map(b"test.job.size.a.1") == (b"test.job.size", (b"foo:a", b"bar:1"))
    assert m.map(b"test.miss1") is None
    assert m.cache_info()[:2] == (2, 5)


# -- spec §5.2: validation ------------------------------------------------------------------


def profiles_with(**mapping) -> list:
    """One profile "test" with one mapping; a field given as ``...`` is left out altogether."""
    base = {"match": "test.job.duration.*.*", "name": "test.job.duration"}
    base.update(mapping)
    return [{"name": "test", "prefix": "test.", "mappings": [{k: v for k, v in base.items() if v is not ...}]}]


@pytest.mark.parametrize(
    "profiles, message",
    [
        # spec §5.5 error vectors, with DogStatsD's full wording (spec §5.2)
        (profiles_with(name=""), "profile: test, mapping num 0: name is required"),
        (profiles_with(name=...), "profile: test, mapping num 0: name is required"),
        (profiles_with(match=...), "profile: test, mapping num 0: match is required"),
        (
            profiles_with(match="test.[]duration.*.*"),
            "profile: test, mapping num 0: invalid wildcard match pattern `test.[]duration.*.*`, "
            "it does not match allowed match regex `^[a-zA-Z0-9\\-_*.]+$`",
        ),
        (
            profiles_with(match="^test.invalid.duration.*.*"),
            "profile: test, mapping num 0: invalid wildcard match pattern `^test.invalid.duration.*.*`, "
            "it does not match allowed match regex `^[a-zA-Z0-9\\-_*.]+$`",
        ),
        (
            profiles_with(match="test.invalid.duration.**"),
            "profile: test, mapping num 0: invalid wildcard match pattern `test.invalid.duration.**`, "
            "it should not contain consecutive `*`",
        ),
        (
            profiles_with(match_type="invalid"),
            "profile: test, mapping num 0: invalid match type, must be `wildcard` or `regex`",
        ),
        (
            [{"prefix": "test.", "mappings": [{"match": "x", "match_type": "invalid", "name": "x"}]}],
            "missing profile name 0",
        ),
        (
            [{"name": "test", "mappings": [{"match": "x", "match_type": "invalid", "name": "x"}]}],
            "missing prefix for profile: test",
        ),
        # the order of checks: match type before name before match
        (profiles_with(match_type="glob", name="", match=""), "profile: test, mapping num 0: invalid match type"),
        (profiles_with(name="", match=""), "profile: test, mapping num 0: name is required"),
        # a regex that does not compile
        (
            profiles_with(match_type="regex", match="test\\.(unclosed"),
            "profile: test, mapping num 0: invalid match `test\\.(unclosed`. cannot compile regex: ",
        ),
    ],
)
def test_validation_messages(profiles, message):
    with pytest.raises(MapperConfigError) as caught:
        MetricMapper(profiles)
    assert str(caught.value).startswith(message)


def test_validation_names_the_profile_by_index_and_the_mapping_by_number():
    good = {"name": "first", "prefix": "a.", "mappings": [{"match": "a.*", "name": "a"}]}
    bad = {
        "name": "second",
        "prefix": "b.",
        "mappings": [{"match": "b.*", "name": "b"}, {"match": "b.**", "name": "b"}],
    }
    with pytest.raises(MapperConfigError, match=r"^profile: second, mapping num 1: invalid wildcard"):
        MetricMapper([good, bad])
    with pytest.raises(MapperConfigError, match=r"^missing profile name 1$"):
        MetricMapper([good, {"prefix": "b."}])
    with pytest.raises(MapperConfigError, match=r"^missing profile name 0$"):
        MetricMapper([{"name": None, "prefix": "b."}])


@pytest.mark.parametrize(
    "profiles, message",
    [
        ({"name": "test"}, "dogstatsd_mapper_profiles must be a list of profiles, not dict"),
        (["abc"], "profile 0: must be a mapping of name, prefix and mappings, not str"),
        ([{"name": 7, "prefix": "x."}], "profile 0: name must be a string, not int"),
        ([{"name": "p", "prefix": ["x."]}], "profile: p: prefix must be a string, not list"),
        ([{"name": "p", "prefix": "x.", "mappings": {"match": "x"}}], "profile: p: mappings must be a list, not dict"),
        ([{"name": "p", "prefix": "x.", "mappings": ["x.*"]}], "profile: p, mapping num 0: must be a mapping, not str"),
        (profiles_with(match=5), "profile: test, mapping num 0: match must be a string, not int"),
        (profiles_with(name=True), "profile: test, mapping num 0: name must be a string, not bool"),
        (profiles_with(match_type=1), "profile: test, mapping num 0: match_type must be a string, not int"),
        (
            profiles_with(tags=["a:$1"]),
            "profile: test, mapping num 0: tags must be a mapping of tag name to value template",
        ),
        (profiles_with(tags={"a": 1}), "profile: test, mapping num 0: tag 'a' must be a string, not int"),
        (profiles_with(tags={1: "$1"}), "profile: test, mapping num 0: tag name 1 must be a string, not int"),
    ],
)
def test_type_validation(profiles, message):
    """YAML can hold anything; a wrong type is a MapperConfigError, never a crash at map() time."""
    with pytest.raises(MapperConfigError) as caught:
        MetricMapper(profiles)
    assert str(caught.value) == message


@pytest.mark.parametrize("size", [-1, 1.5, "10", True])
def test_cache_size_must_be_a_non_negative_int(size):
    with pytest.raises(MapperConfigError, match="dogstatsd_mapper_cache_size"):
        MetricMapper([], size)


def test_optional_fields_may_be_null_or_absent():
    """``match_type:`` and ``tags:`` left empty in YAML are Go's zero values: wildcard, no tags."""
    m = mapper(
        """
        dogstatsd_mapper_profiles:
          - name: test
            prefix: test.
            mappings:
              - match: test.*
                match_type:
                name: t
                tags:
          - name: empty
            prefix: other.
        """
    )
    assert m.map(b"test.x") == (b"t", ())
    assert m.map(b"other.x") is None
    assert MetricMapper([]).map(b"test.x") is None


def test_a_frozen_configuration_is_accepted():
    """Tuples and read-only mappings, as a frozen config object may hold them, work like YAML's lists and dicts."""
    mapping = MappingProxyType({"match": "test.*", "name": "t", "tags": MappingProxyType({"k": "$1"})})
    profile = MappingProxyType({"name": "test", "prefix": "test.", "mappings": (mapping,)})
    assert MetricMapper((profile,)).map(b"test.x") == (b"t", (b"k:x",))


# -- template expansion (Go's Regexp.Expand) ---------------------------------------------------


@pytest.mark.parametrize(
    "template, expanded",
    [
        ("$1", b"aa"),
        ("${1}", b"aa"),
        ("$1_x", b""),  # the name is "1_x": no such group, so empty (use ${1}_x)
        ("${1}_x", b"aa_x"),
        ("$1x", b""),
        ("$2$1", b"bbaa"),
        ("$0", b"test.aa.bb"),
        ("$3", b""),  # out of range: empty
        ("$10", b""),  # taken as long as possible: group 10, not ${1}0
        ("${1}0", b"aa0"),
        ("$01", b""),  # a leading zero is not a number
        ("$$1", b"$1"),
        ("$$", b"$"),
        ("a$", b"a$"),  # nothing after $: literal
        ("$.x", b"$.x"),  # no name: literal
        ("${1", b"${1"),  # unclosed brace: literal $, then the rest
        ("${}", b"${}"),
        ("${1}}", b"aa}"),
        ("$-", b"$-"),
        ("$1é", b""),  # Unicode letters belong to the name, as in Go
        ("${1}é", "aaé".encode()),
        ("x$1.$2y", b"xaa."),  # "2y" is a name
        ("plain", b"plain"),
        ("100%-$1-%b%s", b"100%-aa-%b%s"),  # % is not special
        ("100%", b"100%"),
        ("", b""),
    ],
)
def test_template_expansion(template, expanded):
    m = one("test.*.*", "n", {"t": template})
    assert m.map(b"test.aa.bb") == (b"n", (b"t:" + expanded,))


def test_template_in_name_and_named_groups():
    m = one(
        r"test\.(?P<kind>[a-z]+)\.(?P<id>\d+)",
        "test.$kind.${id}_$1.$kind_",
        {"k": "$kind", "i": "${id}", "n": "$2", "u": "$nope"},
        "regex",
    )
    assert m.map(b"test.job.42") == (b"test.job.42_job.", (b"k:job", b"i:42", b"n:42", b"u:"))


def test_unmatched_optional_group_expands_to_nothing():
    m = one(r"test\.(a)?(b)", "$1-$2", {}, "regex")
    assert m.map(b"test.b") == (b"-b", ())


def test_a_percent_sign_survives_beside_an_unmatched_optional_group():
    """Found by fuzzing: a template without references kept its text only while every group matched."""
    m = one(r"test\.(a)?.*", "100%s", {"k": "$1", "p": "50%"}, "regex")
    assert m.map(b"test.b") == (b"100%s", (b"k:", b"p:50%"))
    assert m.map(b"test.ab") == (b"100%s", (b"k:a", b"p:50%"))


def test_go_style_named_group_syntax():
    """Go 1.22's ``(?<name>…)`` is accepted like ``(?P<name>…)``."""
    m = one(r"test\.(?<kind>\w+)", "x", {"k": "$kind"}, "regex")
    assert m.map(b"test.abc") == (b"x", (b"k:abc",))


def test_tags_keep_declared_order():
    tags = {f"k{i}": f"${1 + i % 2}" for i in range(10)}
    result = one("test.*.*", "n", tags).map(b"test.a.b")
    assert [t.split(b":")[0] for t in result[1]] == [k.encode() for k in tags]


# -- matching semantics ------------------------------------------------------------------------


def test_wildcard_star_matches_one_possibly_empty_segment():
    m = one("test.*.end", "n", {"s": "[$1]"})
    assert m.map(b"test.seg.end") == (b"n", (b"s:[seg]",))
    assert m.map(b"test..end") == (b"n", (b"s:[]",))
    assert m.map(b"test.two.segs.end") is None
    assert m.map(b"test.seg.end.more") is None  # anchored at the end
    assert one("test.a*c", "n", {"s": "$1"}).map(b"test.abbc") == (b"n", (b"s:bb",))


def test_wildcard_dots_are_literal():
    m = one("test.a.b", "n")
    assert m.map(b"test.a.b") == (b"n", ())
    assert m.map(b"test.aXb") is None


def test_regex_is_anchored_at_both_ends():
    m = one(r"test\.job", "n", {}, "regex")
    assert m.map(b"test.job") == (b"n", ())
    assert m.map(b"test.job.x") is None
    assert m.map(b"xtest.job") is None


def test_regex_alternation_is_anchored_as_text_and_searched():
    """DogStatsD compiles "^" + match + "$" and uses FindStringSubmatchIndex, so
    ``test\\.a|b`` means ``^test\\.a`` or ``b$``: each branch is anchored on one side only."""
    m = one(r"test\.a|b", "n", {"whole": "$0"}, "regex")
    assert m.map(b"test.a") == (b"n", (b"whole:test.a",))
    assert m.map(b"test.abc") == (b"n", (b"whole:test.a",))  # only the start is anchored
    assert m.map(b"test.xyz.b") == (b"n", (b"whole:b",))  # found at the end
    assert m.map(b"test.xyz") is None


def test_regex_flags_from_go_syntax():
    assert one(r"(?i)TEST\.JOB", "n", {}, "regex").map(b"test.job") == (b"n", ())
    m = one(r"test\.(?i)A|B", "n", {"m": "$0"}, "regex")  # (?i) reaches past the | in Go
    assert m.map(b"test.a") == (b"n", (b"m:test.a",))
    assert m.map(b"test.x.b") == (b"n", (b"m:b",))
    assert one(r"test\.((?i)a)b", "n", {}, "regex").map(b"test.AB") is None  # the group ends the flag
    assert one(r"test\.(?i:a)b", "n", {}, "regex").map(b"test.Ab") == (b"n", ())
    assert one(r"(?)test\.x", "n", {}, "regex").map(b"test.x") == (b"n", ())


@pytest.mark.parametrize(
    "pattern, name, expected",
    [
        (r"test\.x\z", b"test.x", True),
        (r"test\.[[:digit:]]+", b"test.123", True),
        (r"test\.[[:alpha:][:digit:]_]+", b"test.a_1", True),
        (r"test\.[[:upper:]]", b"test.a", False),
        (r"test\Q.*\E", b"test.*", True),
        (r"test\Q.*\E", b"test.ab", False),
        (r"test\.a{,2}", b"test.a{,2}", True),  # not a repeat in Go: a literal
        (r"test\.a{2}", b"test.aa", True),
        (r"test\.\s", b"test.\x0b", False),  # Go's \s has no \v
        (r"test\.\s", b"test. ", True),
        (r"test\.[\S]", b"test.\x0b", True),
        (r"test\056x", b"test.x", True),  # octal
        (r"test\.\x41\x{42}", b"test.AB", True),
        (r"test\.é+", "test.éé".encode(), True),  # a UTF-8 sequence is repeated whole
        (r"test\.\x{e9}", "test.é".encode(), True),
        (r"test\.[^.]+", "test.é".encode(), True),
        (r"test\.a\.b", b"test.a.b", True),
        (r"test\.\d+\w*\b", b"test.12ab", True),
    ],
)
def test_go_regex_syntax(pattern, name, expected):
    assert (one(pattern, "n", {}, "regex").map(name) is not None) is expected


@pytest.mark.parametrize(
    "pattern, reason",
    [
        (r"test\.(?=x)", "invalid or unsupported Perl syntax: `(?=`"),
        (r"test\.(?!x)", "invalid or unsupported Perl syntax: `(?!`"),
        (r"test\.(?<=x)", "invalid or unsupported Perl syntax: `(?<`"),
        (r"test\.(?#c)", "invalid or unsupported Perl syntax: `(?#`"),
        (r"test\.(?>x)", "invalid or unsupported Perl syntax: `(?>`"),
        (r"test\.(?P<a>x)(?P=a)", "invalid or unsupported Perl syntax: `(?P`"),
        (r"test\.(?x)a", "invalid or unsupported Perl syntax: `(?x`"),
        (r"test\.(?U)a*", "invalid or unsupported Perl syntax: `(?U`"),
        (r"test\.(a)\1", "invalid escape sequence: `\\1`"),
        (r"test\.\Z", "invalid escape sequence: `\\Z`"),
        (r"test\.[\b]", "invalid escape sequence: `\\b`"),
        (r"test\.\xZZ", "invalid escape sequence: `\\xZZ`"),
        (r"test\.a*+", "invalid nested repetition operator: `*+`"),
        (r"test\.a{2}+", "invalid nested repetition operator: `}+`"),
        (r"test\.a{1001}", "invalid repeat count: `{1001}`"),
        (r"test\.a{3,2}", "invalid repeat count: `{3,2}`"),
        (r"test\.[[:nope:]]", "invalid character class range: `[:nope:]`"),
        (r"test\.[a", "missing closing ]: `[a`"),
        ("test\\.x\\", "trailing backslash at end of expression"),
        (r"test\.)", "unbalanced parenthesis"),
        (r"test\.*+", "invalid nested repetition operator"),
        # Go accepts these, but bytes matching cannot be faithful: refused, with the reason
        (r"test\.\pL", "Unicode class `\\p` is not supported"),
        (r"test\.[[:^alpha:]]", "negated class `[:^alpha:]` is not supported"),
        (r"test\.[é]", "non-ASCII character 'é' inside [...] is not supported"),
    ],
)
def test_regex_rejections(pattern, reason):
    """Python-only syntax Go rejects is rejected too, so a config works in both or in neither."""
    with pytest.raises(MapperConfigError) as caught:
        one(pattern, "n", {}, "regex")
    assert str(caught.value).startswith(
        f"profile: test, mapping num 0: invalid match `{pattern}`. cannot compile regex: "
    )
    assert reason in str(caught.value)


# -- profile selection and first match -------------------------------------------------------


def test_only_the_first_applicable_profile_is_tried():
    m = MetricMapper(
        [
            {"name": "a", "prefix": "app.", "mappings": [{"match": "app.x.*", "name": "from_a"}]},
            {"name": "b", "prefix": "app.y", "mappings": [{"match": "app.y.*", "name": "from_b"}]},
            {
                "name": "c",
                "prefix": "*",
                "mappings": [{"match": "app.y.*", "name": "from_c"}, {"match": "z.*", "name": "z"}],
            },
        ]
    )
    assert m.map(b"app.x.1") == (b"from_a", ())
    assert m.map(b"app.y.1") is None  # profile a applies and has no rule: b and c are not tried
    assert m.map(b"z.1") == (b"z", ())  # only the catch-all applies
    assert m.map(b"q") is None


def test_first_matching_mapping_wins_across_wildcard_and_regex_mappings():
    m = MetricMapper(
        [
            {
                "name": "p",
                "prefix": "t.",
                "mappings": [
                    {"match": "t.a.*", "name": "w0"},
                    {"match": "t.*.*", "name": "w1"},
                    {"match": r"t\.b\..*", "match_type": "regex", "name": "r2"},
                    {"match": "t.b.*", "name": "w3"},
                    {"match": "t.*", "name": "w4"},
                    {"match": "t.c.*.*", "name": "w5"},
                ],
            }
        ]
    )
    assert m.map(b"t.a.1")[0] == b"w0"
    assert m.map(b"t.b.1")[0] == b"w1"
    assert m.map(b"t.b.1.2")[0] == b"r2"
    assert m.map(b"t.x")[0] == b"w4"
    assert m.map(b"t.c.1.2")[0] == b"w5"  # the regex block sits between two wildcard blocks
    assert m.map(b"t.d.1.2.3") is None


def test_many_wildcard_mappings_each_get_their_own_groups():
    """Consecutive wildcard mappings share compiled regexes (64 a piece); each still sees only its own $n."""
    mappings = [
        {"match": f"m.{i}" + ".*" * (i % 4), "name": f"m{i}.${i % 4}", "tags": {"all": "$0", "first": "$1"}}
        for i in range(150)
    ]
    m = MetricMapper([{"name": "p", "prefix": "m.", "mappings": mappings}])
    for i in range(150):
        stars = i % 4
        name = b"m.%d" % i + b"".join(b".s%d" % k for k in range(1, stars + 1))
        last = b"s%d" % stars if stars else name  # $0 is the whole name
        first = b"s1" if stars else b""
        assert m.map(name) == (b"m%d." % i + last, (b"all:" + name, b"first:" + first)), name


def reference_map(patterns: list[str], name: bytes):
    """The mapping loop as DogStatsD writes it: one anchored regex per wildcard, tried in order."""
    for index, pattern in enumerate(patterns):
        regex = "^" + pattern.replace(".", "\\.").replace("*", "([^.]*)") + "$"
        match = re.search(regex.encode(), name)
        if match:
            return b"m%d" % index, (b"t:" + b"|".join(match.groups()) + b"|" + match.group(0),)
    return None


@settings(max_examples=100, deadline=None)
@given(
    patterns=st.lists(
        st.from_regex(r"p\.[ab*]{1,3}(\.[ab*]{1,3}){0,2}", fullmatch=True).filter(lambda p: "**" not in p),
        min_size=1,
        max_size=140,
    ),
    names=st.lists(st.from_regex(rb"p\.[ab]{0,3}(\.[ab]{0,3}){0,2}", fullmatch=True), min_size=1, max_size=10),
)
def test_combined_wildcards_agree_with_a_loop_over_mappings(patterns, names):
    """Property: the alternation regexes give the same answer as trying each mapping in turn."""
    templates = ["|".join(f"${{{g}}}" for g in range(1, p.count("*") + 1)) + "|$0" for p in patterns]
    mappings = [
        {"match": p, "name": f"m{i}", "tags": {"t": t}}
        for i, (p, t) in enumerate(zip(patterns, templates, strict=False))
    ]
    m = MetricMapper([{"name": "p", "prefix": "p.", "mappings": mappings}], cache_size=0)
    derived = [p.replace("*", filler).encode() for p in patterns for filler in ("a", "")]
    for name in names + derived:
        assert m.map(name) == reference_map(patterns, name)


def test_backtracking_within_one_wildcard_mapping():
    m = one("test.*.*_x", "n", {"a": "$1", "b": "$2"})
    assert m.map(b"test.p.q_r_x") == (b"n", (b"a:p", b"b:q_r"))


# -- the cache -------------------------------------------------------------------------------


def test_cache_counts_hits_and_misses_and_caches_no_match():
    m = mapper(SIMPLE)
    assert m.map(b"test.job.size.a.b") == m.map(b"test.job.size.a.b")
    assert m.map(b"test.nothing") is None
    assert m.map(b"test.nothing") is None
    hits, misses, maxsize, size = m.cache_info()
    assert (hits, misses, maxsize, size) == (2, 2, 1000, 2)


def test_names_outside_every_profile_are_not_cached():
    m = mapper(SIMPLE)
    assert m.map(b"other.metric") is None
    assert m.map(b"other.metric") is None
    assert m.cache_info()[:2] == (0, 0)
    assert m.cache_info().currsize == 0


def test_cache_evicts_the_least_recently_used_entry():
    m = mapper(SIMPLE, cache_size=2)
    a, b, c = b"test.job.size.a.1", b"test.job.size.b.2", b"test.nope"
    m.map(a)
    m.map(b)
    m.map(a)  # a is now the most recently used
    m.map(c)  # evicts b
    before = m.cache_info()
    assert m.map(a) == (b"test.job.size", (b"foo:a", b"bar:1"))
    assert m.cache_info().hits == before.hits + 1
    assert m.map(b) == (b"test.job.size", (b"foo:b", b"bar:2"))
    assert m.cache_info().misses == before.misses + 1
    assert m.cache_info().currsize == 2


def test_cache_size_zero_disables_the_cache():
    m = mapper(SIMPLE, cache_size=0)
    for _ in range(3):
        assert m.map(b"test.job.size.a.b") == (b"test.job.size", (b"foo:a", b"bar:b"))
    hits, misses, _, size = m.cache_info()
    assert (hits, misses, size) == (0, 3, 0)


# -- bytes ------------------------------------------------------------------------------------


def test_non_utf8_bytes_pass_through_unchanged():
    m = mapper(SIMPLE)
    raw = b"\xff\xfe\x80"
    assert m.map(b"test.job.size." + raw + b".\xc3") == (b"test.job.size", (b"foo:" + raw, b"bar:\xc3"))
    assert m.map(b"test.\xff") is None
    assert m.map(b"\xff.test") is None
    assert one(r"test\.(.+)", "n", {"v": "$1"}, "regex").map(b"test." + raw) == (b"n", (b"v:" + raw,))


def test_non_ascii_templates_and_prefixes_are_utf8():
    m = one("test.*", "métrique.$1", {"clé": "été-$1"}, prefix="test.")
    assert m.map(b"test.x") == ("métrique.x".encode(), ("clé:été-x".encode(),))
    m = one(r"tést\.(.+)", "n", {"v": "$1"}, "regex", prefix="tést.")
    assert m.map("tést.ü".encode()) == (b"n", ("v:ü".encode(),))
