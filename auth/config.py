"""Configuration of the STS client ([sts] in the TOML file)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StsConfig:
    region: str = "us-east-1"
    endpoint_url: str | None = None  # default: the regional endpoint of `region`
    # PEM file of the CAs an https STS endpoint is verified against; None:
    # AWS_CA_BUNDLE if set, else the system's (docs/design.md, Configuration).
    ca_bundle: str | None = None

    def __post_init__(self) -> None:
        if self.ca_bundle is not None and not self.ca_bundle:
            raise ValueError("sts.ca_bundle must not be empty")
        if not self.region:
            raise ValueError("sts.region must not be empty")
        if self.endpoint_url is not None and not self.endpoint_url.startswith(
            ("http://", "https://")
        ):
            raise ValueError("sts.endpoint_url must start with http:// or https://")
