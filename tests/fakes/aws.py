"""A real moto server (SQS, S3) for the whole session, reset per test that uses it.

`moto_server` is the endpoint URL; `aws` gives a test fake credentials in its environment, a
clean moto state, boto3 clients and the claim-check bucket. Production code never imports
this module; it only sees AWS_ENDPOINT_URL.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
import requests

from shared.local.embedded_redis import free_port

REGION = "us-east-1"
BUCKET = "claim-checks"
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
}


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@dataclass
class Aws:
    endpoint_url: str
    bucket: str
    sqs: Any
    s3: Any

    def objects(self) -> list[str]:
        listing = self.s3.list_objects_v2(Bucket=self.bucket)
        return [item["Key"] for item in listing.get("Contents", [])]


@pytest.fixture()
def aws(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> Aws:
    for name, value in FAKE_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    requests.post(f"{moto_server}/moto-api/reset", timeout=10).raise_for_status()
    session = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
    )
    sqs = session.client("sqs", endpoint_url=moto_server)
    s3 = session.client("s3", endpoint_url=moto_server)
    s3.create_bucket(Bucket=BUCKET)
    return Aws(endpoint_url=moto_server, bucket=BUCKET, sqs=sqs, s3=s3)
