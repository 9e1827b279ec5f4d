"""Conformance of `POST /v1/images/generations` with the official `openai` Python package (`client.images.generate`).

Run by the Rust pipeline test `proxy::the_official_python_sdk_generates_images`, with the environment of
test_openai_sdk.py. The alias `paint` has two image models: `sketcher` (mock m1, prices only 512x512 at 0.018) first,
then `painter` (mock m0: 1024x1024 at 0.04, hd at 0.08, and 0.04 when no size is named). Images are priced per image
at the serving model's price for the size and quality asked for.
"""

import json
import os
import urllib.request

import openai
import pytest

BASE_URL = os.environ["GATEWAY_BASE_URL"]
KEY = os.environ["GATEWAY_KEY"]
MOCKS = os.environ["MOCK_URLS"].split(",")


@pytest.fixture
def client():
    return openai.OpenAI(base_url=BASE_URL, api_key=KEY, max_retries=0)


def last_request(index):
    return json.loads(urllib.request.urlopen(f"{MOCKS[index]}/__mock/requests").read())[-1]


def test_images_are_generated_and_priced_per_image(client):
    raw = client.images.with_raw_response.generate(model="paint", prompt="a red square", n=2, size="1024x1024")
    images = raw.parse()
    assert [image.url for image in images.data] == ["https://images.example/0.png", "https://images.example/1.png"]
    assert raw.headers["x-gateway-cost-usd"] == "0.08"
    sent = last_request(0)["body"]
    assert (sent["model"], sent["prompt"], sent["n"], sent["size"]) == ("image-0", "a red square", 2, "1024x1024")


def test_the_quality_asked_for_sets_the_price(client):
    raw = client.images.with_raw_response.generate(model="paint", prompt="a red square", size="1024x1024", quality="hd")
    assert len(raw.parse().data) == 1
    assert raw.headers["x-gateway-cost-usd"] == "0.08"


def test_the_size_decides_which_model_may_serve(client):
    raw = client.images.with_raw_response.generate(model="paint", prompt="a sketch", size="512x512")
    assert raw.headers["x-gateway-cost-usd"] == "0.018"
    assert last_request(1)["body"]["model"] == "image-1"


def test_a_request_naming_no_size_is_priced_at_the_default(client):
    raw = client.images.with_raw_response.generate(model="paint", prompt="anything", response_format="b64_json")
    assert raw.parse().data[0].b64_json == "aW1hZ2U="
    assert raw.headers["x-gateway-cost-usd"] == "0.04"


def test_a_size_no_candidate_prices_is_refused_before_anything_is_sent(client):
    before = len(json.loads(urllib.request.urlopen(f"{MOCKS[0]}/__mock/requests").read()))
    with pytest.raises(openai.BadRequestError) as raised:
        client.images.generate(model="paint", prompt="tiny", size="256x256")
    assert "has no price for the image size and quality asked for" in raised.value.message
    assert len(json.loads(urllib.request.urlopen(f"{MOCKS[0]}/__mock/requests").read())) == before


@pytest.mark.parametrize("extra,param", [({"n": 11}, "n"), ({"size": 1024}, "size")])
def test_bad_parameters_name_the_field(client, extra, param):
    with pytest.raises(openai.BadRequestError) as raised:
        client.images.generate(model="paint", prompt="p", extra_body=extra)
    assert raised.value.param == param


def test_a_chat_model_is_not_an_image_model(client):
    with pytest.raises(openai.BadRequestError) as raised:
        client.images.generate(model="chain", prompt="p")
    assert "lacks the capability 'images'" in raised.value.message


def test_an_exhausted_budget_is_refused():
    broke = openai.OpenAI(base_url=BASE_URL, api_key=os.environ["GATEWAY_BROKE_KEY"], max_retries=0)
    with pytest.raises(openai.RateLimitError) as raised:
        broke.images.generate(model="paint", prompt="p", size="1024x1024")
    assert raised.value.code == "budget_exceeded"
