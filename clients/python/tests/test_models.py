"""The models cannot drift from the server: each is held to its schema in the real server's
`GET /v1/openapi.json` (same fields, same required ones, amounts as decimal strings)."""

from __future__ import annotations

import typing
from decimal import Decimal

import httpx

from creditgraph.models import MODELS
from creditgraph.testing import CreditgraphServer


def test_every_model_matches_its_schema(server: CreditgraphServer) -> None:
    document = httpx.get(f"{server.base_url}/v1/openapi.json").json()
    schemas = document["components"]["schemas"]
    for model in MODELS:
        schema = schemas[model.schema_name]
        properties = schema["properties"]
        assert set(model.model_fields) == set(properties), f"{model.__name__} vs {model.schema_name}"
        required = {name for name, field in model.model_fields.items() if field.is_required()}
        assert required == set(schema.get("required", [])), f"{model.__name__}: required fields"
        for name, field in model.model_fields.items():
            if Decimal in (field.annotation, *typing.get_args(field.annotation)):
                kind = properties[name].get("type")
                kinds = kind if isinstance(kind, list) else [kind]
                assert "string" in kinds, f"{model.__name__}.{name} is an amount: a decimal string on the wire"
