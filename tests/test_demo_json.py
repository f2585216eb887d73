"""The demo upstream's JSON answers fit the schemas SDKs generate from Pydantic models."""

from __future__ import annotations

from datetime import datetime
from enum import Enum

from pydantic import BaseModel, Field

from server.demo_json import instance


class Colour(Enum):
    RED = "red"
    BLUE = "blue"


class Point(BaseModel):
    x: int = Field(ge=3)
    y: float = Field(gt=0.5)


class Shape(BaseModel):
    name: str = Field(min_length=6)
    colour: Colour
    corners: list[Point] = Field(min_length=2)
    centre: Point | None
    made: datetime
    parent: Shape | None = None  # recursive: optional, so left out


def test_instance_of_a_nested_pydantic_schema_validates() -> None:
    value = instance(Shape.model_json_schema())
    shape = Shape.model_validate(value)
    assert shape.colour is Colour.RED
    assert len(shape.corners) == 2 and shape.corners[0].x == 3
    assert shape.centre is not None and shape.centre.y > 0.5
    assert "parent" not in value
