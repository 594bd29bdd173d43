"""The Kafka connection settings: what each protocol passes to aiokafka and Faust, and what is refused."""
import ssl

import faust
import pytest
from pydantic import ValidationError

from shared.kafka import KafkaSecurity


def test_plaintext_by_default():
    s = KafkaSecurity(_env_file=None)
    assert s.client_options() == {"security_protocol": "PLAINTEXT"}
    assert s.faust_credentials() is None


def test_sasl_scram_over_tls():
    s = KafkaSecurity(security_protocol="SASL_SSL", sasl_username="membership", sasl_password="secret")
    options = s.client_options()
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == ("membership", "secret")
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    creds = s.faust_credentials()
    assert isinstance(creds, faust.SASLCredentials) and creds.protocol.value == "SASL_SSL"
    assert "secret" not in repr(s)  # the password never reaches a log line through the settings


def test_tls_only():
    s = KafkaSecurity(security_protocol="SSL")
    assert set(s.client_options()) == {"security_protocol", "ssl_context"}
    assert isinstance(s.faust_credentials(), faust.SSLCredentials)


@pytest.mark.parametrize("settings", [
    {"security_protocol": "SASL_SSL"},  # no user
    {"security_protocol": "SASL_PLAINTEXT", "sasl_username": "u"},  # no password
    {"security_protocol": "SSL", "ssl_certfile": "/tmp/client.crt"},  # a certificate without its key
    {"security_protocol": "TLS"},  # not a protocol
    {"security_protocol": "SASL_SSL", "sasl_username": "u", "sasl_password": "p", "sasl_mechanism": "MD5"},
])
def test_incomplete_or_unknown_settings_are_refused_at_start(settings):
    with pytest.raises(ValidationError):
        KafkaSecurity(**settings)
