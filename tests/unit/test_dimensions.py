"""Bots, devices, browsers, systems and sources from real User-Agents and referrers."""

from __future__ import annotations

import pytest

from aggregator.counting.dimensions import (
    DIRECT,
    NOT_A_BROWSER,
    UNKNOWN,
    SourceNamer,
    UaClassifier,
    default_namer,
    list_versions,
    load_referrers,
    utm_value,
)

CHROME_WIN = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
              "Chrome/131.0.0.0 Safari/537.36")
# (user agent, device, browser, os) of people's browsers
PEOPLE = [
    (CHROME_WIN, "Desktop", "Chrome", "Windows"),
    ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
     "Version/18.1 Safari/605.1.15", "Desktop", "Safari", "macOS"),
    ("Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
     "Desktop", "Firefox", "Linux"),
    ("Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
     "Gecko) Version/18.1 Mobile/15E148 Safari/604.1", "Mobile", "Safari", "iOS"),
    ("Mozilla/5.0 (iPad; CPU OS 17_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
     "Version/17.6 Mobile/15E148 Safari/604.1", "Tablet", "Safari", "iOS"),
    ("Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/131.0.0.0 Mobile Safari/537.36", "Mobile", "Chrome", "Android"),
    ("Mozilla/5.0 (Linux; Android 14; SM-S921B) AppleWebKit/537.36 (KHTML, like Gecko) "
     "SamsungBrowser/26.0 Chrome/122.0.0.0 Mobile Safari/537.36",
     "Mobile", "Samsung Internet", "Android"),
    ("Mozilla/5.0 (Linux; Android 13; SM-X710) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/131.0.0.0 Safari/537.36", "Tablet", "Chrome", "Android"),
    ("Mozilla/5.0 (Android 14; Mobile; rv:133.0) Gecko/133.0 Firefox/133.0",
     "Mobile", "Firefox", "Android"),
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0", "Desktop", "Edge", "Windows"),
    ("Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/131.0.0.0 Safari/537.36", "Desktop", "Chrome", "Chrome OS"),
]
BOTS = [
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; bingbot/2.0; "
    "+http://www.bing.com/bingbot.htm) Chrome/116.0.1938.76 Safari/537.36",
    "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2; "
    "+https://openai.com/gptbot)",
    "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
    "curl/8.5.0",
    "python-requests/2.32.3",
    "Python/3.11 aiohttp/3.11.11",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "HeadlessChrome/156.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Unknown; Linux x86_64) AppleWebKit/538.1 (KHTML, like Gecko) "
    "PhantomJS/2.1.1 Safari/538.1",
    "Mozilla/5.0 (Linux; Android 11; moto g power (2022)) AppleWebKit/537.36 (KHTML, like "
    "Gecko) Chrome/131.0.0.0 Mobile Safari/537.36 Chrome-Lighthouse",
    "node",
    "",
    "   ",
]


@pytest.fixture(scope="module")
def classifier() -> UaClassifier:
    return UaClassifier(cache_size=4)


@pytest.mark.parametrize(("ua", "device", "browser", "os"), PEOPLE)
def test_a_persons_browser_is_counted_with_its_device_browser_and_system(
        classifier: UaClassifier, ua: str, device: str, browser: str, os: str) -> None:
    facts = classifier.classify(ua)
    assert (facts.bot, facts.device, facts.browser, facts.os) == (False, device, browser, os)


@pytest.mark.parametrize("ua", BOTS)
def test_crawlers_libraries_headless_browsers_and_an_empty_ua_are_bots(
        classifier: UaClassifier, ua: str) -> None:
    assert classifier.classify(ua).bot


def test_no_user_agent_at_all_is_our_own_format_never_a_bot() -> None:
    assert UaClassifier().classify(None) == NOT_A_BROWSER
    assert NOT_A_BROWSER.bot is False
    assert (NOT_A_BROWSER.device, NOT_A_BROWSER.browser, NOT_A_BROWSER.os) == (UNKNOWN,) * 3


def test_umami_nodes_default_user_agent_is_not_a_bot() -> None:
    facts = UaClassifier().classify("Mozilla/5.0 Umami/v20.20.2")
    assert not facts.bot and facts.device == UNKNOWN


def test_the_ua_cache_is_bounded_and_answers_repeats_without_classifying_again() -> None:
    c = UaClassifier(cache_size=2)
    for ua in (PEOPLE[0][0], PEOPLE[1][0], PEOPLE[0][0], PEOPLE[2][0], PEOPLE[0][0]):
        c.classify(ua)
    assert (c.hits, c.misses) == (2, 3)
    assert len(c._cache) == 2
    c.classify(PEOPLE[1][0])  # evicted: the least recently used
    assert c.misses == 4


@pytest.mark.parametrize(("referrer", "host", "source"), [
    (None, "shop.example", DIRECT),
    ("", "shop.example", DIRECT),
    ("https://www.google.com/", "shop.example", "Google"),
    ("https://www.google.de/search?q=x", "shop.example", "Google"),
    ("https://duckduckgo.com/", "shop.example", "DuckDuckGo"),
    ("https://t.co/abc", "shop.example", "Twitter"),
    ("https://l.facebook.com/l.php?u=x", "shop.example", "Facebook"),
    ("http://news.ycombinator.com/item?id=1", "shop.example", "Hacker News"),
    ("https://chatgpt.com/", "shop.example", "ChatGPT"),
    ("https://www.baidu.com/s?wd=x", "shop.example", "Baidu"),
    ("https://Blog.Friend.example:8443/post", "shop.example", "blog.friend.example"),
    ("https://www.friend.example/", "shop.example", "friend.example"),
    ("https://shop.example/pricing", "shop.example", None),
    ("https://www.shop.example/", "shop.example", None),
    ("https://shop.example/", "www.shop.example", None),
    ("https://shop.example/", None, "shop.example"),
    ("not a url at all", "shop.example", "not a url at all"),
])
def test_referrer_sources(referrer: str | None, host: str | None, source: str | None) -> None:
    assert default_namer().source_of(referrer, host) == source


def test_a_parent_domain_on_the_list_names_a_subdomain() -> None:
    namer = SourceNamer({"example.org": "Example"})
    assert namer.source_of("https://a.b.example.org/x", "shop") == "Example"
    assert namer.source_of("https://example.com/x", "shop") == "example.com"


def test_the_vendored_list_and_the_overlay_both_load() -> None:
    names = load_referrers()
    assert len(names) > 1900
    assert names["perplexity.ai"] == "Perplexity" and names["bing.com"] == "Bing"


def test_utm_values_count_as_sent_and_blank_is_none() -> None:
    assert utm_value("Newsletter Dec") == "Newsletter Dec"
    assert utm_value(None) is None and utm_value("  ") is None


def test_list_versions_name_each_list() -> None:
    versions = list_versions()
    assert versions["crawlerdetect"] == "0.4.2" and len(versions["referrers_sha256"]) == 16
