"""Property tests of the metric mapper over random profiles and names (issue 12, item 4).

``test_mapper.py`` checks the combined wildcard regexes against a loop over
mappings.  Here the profiles themselves are random: whatever YAML gives,
building a mapper either works or raises ``MapperConfigError``; a built mapper
maps any bytes without raising, and its cached answers are the answers it
gives without a cache.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from twisted_statsd.core.mapper import MapperConfigError, MetricMapper

# Pieces of Go RE2 syntax, valid and not, that the translation has to handle or refuse.
REGEX_PIECES = [
    "(",
    ")",
    "(?:",
    "(?i)",
    "(?i:",
    "(?-s)",
    "(?P<n>",
    "(?<n>",
    "(?=",
    "(?U)",
    "[",
    "]",
    "[^",
    "[:alpha:]",
    "[[:digit:]]",
    "[[:^space:]]",
    "[[:nope:]]",
    "\\",
    "\\d",
    "\\s",
    "\\S",
    "\\Q",
    "\\E",
    "\\x41",
    "\\x{10FFFF}",
    "\\x{110000}",
    "\\0",
    "\\1",
    "\\z",
    "\\p{L}",
    "\\b",
    ".",
    "*",
    "+",
    "?",
    "*+",
    "{2}",
    "{1,}",
    "{2,1}",
    "{1001}",
    "{",
    "}",
    "|",
    "^",
    "$",
    "a",
    "b",
    "é",
    "&&",
    "~~",
    "-",
    "_",
]
regex_patterns = st.lists(st.sampled_from(REGEX_PIECES), min_size=1, max_size=10).map("".join) | st.text(max_size=12)
wildcard_patterns = st.from_regex(r"[a-c*.]{1,8}", fullmatch=True) | st.text(max_size=8)
templates = st.lists(
    st.sampled_from(["$1", "$2", "${1}", "$n", "${n}", "$$", "$", "${", "$0", "$1_x", "%", "%s", "x", ".", "é"]),
    max_size=5,
).map("".join)
yaml_scalars = st.none() | st.integers() | st.booleans() | st.text(max_size=5)


@st.composite
def mappings(draw):
    regex = draw(st.booleans())
    mapping = {
        "match": draw(regex_patterns if regex else wildcard_patterns),
        "name": draw(templates.filter(bool) | yaml_scalars),
        "tags": draw(st.dictionaries(st.text(max_size=4), templates | st.none(), max_size=3) | yaml_scalars),
    }
    if regex or draw(st.booleans()):
        mapping["match_type"] = "regex" if regex else draw(st.sampled_from(["wildcard", "glob", None]))
    return mapping


profiles = st.lists(
    st.fixed_dictionaries(
        {
            "name": st.text(min_size=1, max_size=4) | yaml_scalars,
            "prefix": st.sampled_from(["a", "a.", "b", "*", ""]) | yaml_scalars,
            "mappings": st.lists(mappings(), max_size=5) | yaml_scalars,
        }
    )
    | yaml_scalars,
    max_size=3,
)
# Mostly valid profiles, whose mappings match the names below often enough to exercise templates.
REGEX_UNITS = [
    "a",
    "\\.",
    "([a-c]+)",
    "(?P<n>[a-c]*)",
    "(?i)B",
    "[[:alpha:]]+",
    "\\d*",
    "(b|c)?",
    "x{0,2}",
    ".*",
    "\\Qa.b\\E",
]
valid_mappings = st.builds(
    lambda regex, wildcard, pattern, name, tags: {
        "match_type": "regex" if regex else "wildcard",
        "match": pattern if regex else wildcard,
        "name": name,
        "tags": tags,
    },
    st.booleans(),
    st.from_regex(r"a\.[a-c*]{1,3}(\.[a-c*]{1,3}){0,2}", fullmatch=True).filter(lambda p: "**" not in p),
    st.lists(st.sampled_from(REGEX_UNITS), min_size=1, max_size=5).map("".join),
    templates.filter(bool),
    st.dictionaries(st.sampled_from(["k", "t", "é"]), templates, max_size=2),
)
valid_profiles = st.lists(
    st.fixed_dictionaries(
        {
            "name": st.sampled_from(["p", "q"]),
            "prefix": st.sampled_from(["a", "a.", "b", "*"]),
            "mappings": st.lists(valid_mappings, min_size=1, max_size=6),
        }
    ),
    min_size=1,
    max_size=2,
)
metric_names = (
    st.from_regex(rb"a\.[a-cB0-9.]{0,8}", fullmatch=True) | st.from_regex(rb"[ab]?[a-c.x]{0,10}", fullmatch=True)
) | st.binary(max_size=16)


def build(config, cache_size=1000):
    try:
        return MetricMapper(config, cache_size=cache_size)
    except MapperConfigError:
        return None


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_profiles | profiles)
def test_any_profiles_build_a_mapper_or_raise_the_documented_error(config):
    build(config)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_profiles | profiles, st.lists(metric_names, max_size=20))
def test_a_built_mapper_maps_any_name_and_the_cache_changes_no_answer(config, names):
    cached, uncached = build(config, cache_size=4), build(config, cache_size=0)
    if cached is None:
        return
    for name in names + names:  # the second time round, hits and evictions
        result = cached.map(name)
        assert result == uncached.map(name)
        if result is not None:
            new_name, tags = result
            assert isinstance(new_name, bytes) and all(isinstance(tag, bytes) for tag in tags)
