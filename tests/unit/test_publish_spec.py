"""``publish:`` in a job spec: parsed strictly, checked against the job's channels and catalog
before Ray starts, frozen into ``Job.publish``, and not part of the run's identity."""

from __future__ import annotations

from pathlib import Path

import pytest

from factory.spec.job import SpecError, load_job, parse_job
from factory.spec.publish import main_channel

REPO = Path(__file__).resolve().parents[2]


def spec(publish=None, *, channels=("google-shopping", "meta-square"),
         manifest="products.csv") -> dict:
    data = {"name": "pub", "manifest": {"uri": manifest}, "output": {"uri": "out"},
            "prompt": {"template": "a {{ title }}"},
            "stages": [{"kind": "generate", "model": "synthetic"}],
            "channels": list(channels)}
    if publish is not None:
        data["publish"] = publish
    return data


def problems(publish, **kw) -> str:
    with pytest.raises(SpecError) as caught:
        parse_job(spec(publish, **kw))
    return str(caught.value)


def test_a_valid_section_is_frozen_on_the_job():
    job = parse_job(spec({"formats": ["assets-parquet", "shopify-csv", "merchant-xml"],
                          "presign_expiry": 3600, "alt_text": "{{ title }}"}))
    publish = job.publish
    assert publish.formats == ("shopify-csv", "merchant-xml", "assets-parquet")  # fixed order
    assert (publish.presign_expiry_s, publish.base_url, publish.alt_text) == (
        3600, None, "{{ title }}")
    assert main_channel(publish, ("meta-square", "google-shopping")) == "google-shopping"
    assert main_channel(publish, ("meta-square", "story")) == "meta-square"
    assert not job.warnings
    assert parse_job(spec()).publish is None


def test_publishing_is_not_part_of_the_runs_identity():
    plain = parse_job(spec())
    published = parse_job(spec({"formats": ["assets-parquet"]}))
    assert plain.spec_hash == published.spec_hash


@pytest.mark.parametrize("publish, message", [
    ({"formats": []}, "publish.formats: List should have at least 1 item"),
    ({"formats": ["csv"]}, "publish.formats[0]: Input should be"),
    ({"formats": ["assets-parquet"], "url": "x"}, "publish.url: unknown key"),
    ({"formats": ["assets-parquet", "assets-parquet"]}, "'assets-parquet' is listed twice"),
    ({"formats": ["shopify-csv"], "base_url": "https://cdn.example.com/"},
     "publish.base_url: must hold '{key}' exactly once"),
    ({"formats": ["shopify-csv"], "base_url": "ftp://cdn.example.com/{key}"},
     "publish.base_url: must be an http:// or https:// URL"),
    ({"formats": ["shopify-csv"], "base_url": "https://c.example/{key}", "presign_expiry": 60},
     "give base_url or presign_expiry, not both"),
    ({"formats": ["shopify-csv"], "presign_expiry": 8 * 24 * 3600},
     "publish.presign_expiry: Input should be less than or equal to 604800"),
    ({"formats": ["shopify-csv"], "alt_text": "{{ title"}, "publish.alt_text: template does"),
    ({"formats": ["shopify-csv"], "main_channel": "pinterest"},
     "publish.main_channel: 'pinterest' is not one of the job's channels"),
])
def test_a_bad_section_is_reported_with_its_key(publish, message):
    assert message in problems(publish)


def test_merchant_feeds_need_channel_assets_and_shopify_csv_a_shopify_catalog():
    text = problems({"formats": ["merchant-tsv"]}, channels=())
    assert "merchant-tsv links AI-generated images" in text and "list channels" in text
    text = problems({"formats": ["shopify-csv"]}, manifest="feed.tsv")
    assert "this job reads a merchant-tsv catalog" in text
    assert "the job lists no channels" in problems(
        {"formats": ["assets-parquet"], "main_channel": "x"}, channels=())


def test_feeds_without_fetchable_urls_warn():
    job = parse_job(spec({"formats": ["shopify-csv"]}))
    assert any("cannot fetch" in w for w in job.warnings)
    assert not parse_job(spec({"formats": ["assets-parquet"]})).warnings


def test_the_shopify_example_job_publishes_after_its_commit():
    job = load_job(REPO / "jobs" / "shopify-catalog.yaml")
    assert job.publish is not None and "shopify-csv" in job.publish.formats
    assert main_channel(job.publish, tuple(c.name for c in job.channels)) == "google-shopping"
