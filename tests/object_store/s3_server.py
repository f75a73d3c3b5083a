"""A real S3 API for the tests: moto's server mode on a free localhost port, in this process.

The server keeps its buckets when it is stopped and started again on the same port, which is how the
tests take it away mid-epoch. Requests must be signed with an IAM access key it issued, so wrong
credentials are refused as on AWS. Clients find it through the standard AWS variables only.
"""
from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import boto3
from moto import settings
from moto.server import ThreadedMotoServer

REGION = "us-east-1"


class S3Server:
    """moto on 127.0.0.1:`port`; `env` holds the variables a client (or a subprocess) needs."""

    def __init__(self) -> None:
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        self.is_down = threading.Event()
        host, self.port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{self.port}"
        admin = dict(endpoint_url=self.endpoint, region_name=REGION, aws_access_key_id="admin",
                     aws_secret_access_key="admin")
        iam = boto3.client("iam", **admin)
        iam.create_user(UserName="trainer")
        iam.put_user_policy(UserName="trainer", PolicyName="s3", PolicyDocument=(
            '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}'))
        key = iam.create_access_key(UserName="trainer")["AccessKey"]
        self._admin = boto3.client("s3", **admin)
        self.env = {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
                    "AWS_ENDPOINT_URL": self.endpoint, "AWS_DEFAULT_REGION": REGION,
                    "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}
        self._no_auth = settings.INITIAL_NO_AUTH_ACTION_COUNT
        settings.INITIAL_NO_AUTH_ACTION_COUNT = 0  # from now on every request is authenticated

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return f"s3://{name}"

    def client(self):
        """A boto3 S3 client with the issued credentials (for arranging and inspecting buckets)."""
        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"])

    @contextmanager
    def down(self) -> Iterator[None]:
        """The server unreachable (port closed) for the duration; same port and buckets afterwards."""
        self._server.stop()
        self.is_down.set()
        try:
            yield
        finally:
            self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
            self._server.start()
            self.is_down.clear()

    def down_for(self, seconds: float) -> None:
        with self.down():
            time.sleep(seconds)

    def stop(self) -> None:
        self._server.stop()
        settings.INITIAL_NO_AUTH_ACTION_COUNT = self._no_auth
