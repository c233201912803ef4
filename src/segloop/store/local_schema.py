"""The label schema of the local datastore: the classes (value, name, colour) label maps may
hold; a class that saved revisions use cannot be removed."""

from __future__ import annotations

import numpy as np
from sqlalchemy import delete, select

from segloop.store.errors import ValidationError
from segloop.store.local_sessions import LocalSessions
from segloop.store.names import _check_text
from segloop.store.records import LabelClass, LabelSchema
from segloop.store.sql import LabelClassRow, LabelRevisionRow

MAX_LABEL_VALUE = 65535
DEFAULT_BACKGROUND = LabelClass(0, "background", (0, 0, 0))


class LocalSchema(LocalSessions):
    """The label classes, in their own table."""

    def get_schema(self) -> LabelSchema:
        with self._read() as s:
            rows = s.scalars(select(LabelClassRow).order_by(LabelClassRow.value)).all()
            classes = [LabelClass(r.value, r.name, (r.red, r.green, r.blue)) for r in rows]
        if not any(c.value == 0 for c in classes):
            classes.insert(0, DEFAULT_BACKGROUND)
        return LabelSchema(tuple(classes))

    def set_schema(self, schema: LabelSchema) -> None:
        """Replace the label schema. Value 0 (background) is added when missing.

        Names and colours may change freely; a class value that saved label revisions contain
        cannot be removed (those revisions would hold values outside the schema): `ValidationError`
        naming the classes and how many revisions use them, and the schema is left as it was.
        """
        classes = _validate_schema(schema)
        with self._write() as s:
            old = {row.value: row.name for row in s.scalars(select(LabelClassRow))}
            removed = set(old) - {c.value for c in classes} - {0}
            if removed:
                used: dict[int, int] = {}
                for counts in s.scalars(select(LabelRevisionRow.voxel_counts)):
                    for key, n in (counts or {}).items():
                        if int(key) in removed and n:
                            used[int(key)] = used.get(int(key), 0) + 1
                if used:
                    listed = ", ".join(f"{old[v]!r} (value {v}, in {n} revision{'s' if n != 1 else ''})"
                                       for v, n in sorted(used.items()))
                    raise ValidationError(
                        f"the new label schema drops classes that saved label revisions use: {listed}; "
                        "keep them (rename or recolour them instead)"
                    )
            s.execute(delete(LabelClassRow))
            s.flush()
            for c in classes:
                s.add(
                    LabelClassRow(
                        value=c.value, name=c.name, red=c.color[0], green=c.color[1], blue=c.color[2]
                    )
                )


def _validate_schema(schema: LabelSchema) -> list[LabelClass]:
    if not isinstance(schema, LabelSchema):
        raise ValidationError(f"set_schema needs a LabelSchema, got {type(schema).__name__}")
    classes: list[LabelClass] = []
    values: set[int] = set()
    names: set[str] = set()
    for c in schema.classes:
        if not isinstance(c, LabelClass):
            raise ValidationError(f"schema classes must be LabelClass, got {type(c).__name__}")
        if (
            isinstance(c.value, bool)
            or not isinstance(c.value, (int, np.integer))
            or not 0 <= c.value <= MAX_LABEL_VALUE
        ):
            raise ValidationError(f"class value must be an integer 0-{MAX_LABEL_VALUE}, got {c.value!r}")
        name = _check_text(c.name, "class name", 128).strip()
        color = tuple(c.color) if isinstance(c.color, (tuple, list)) else ()
        if len(color) != 3 or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 0 <= v <= 255 for v in color
        ):
            raise ValidationError(
                f"class {name!r} colour must be three integers 0-255 (RGB), got {c.color!r}"
            )
        if int(c.value) in values:
            raise ValidationError(f"class value {c.value} appears twice in the schema")
        if name.lower() in names:
            raise ValidationError(f"class name {name!r} appears twice in the schema")
        values.add(int(c.value))
        names.add(name.lower())
        classes.append(LabelClass(int(c.value), name, (int(color[0]), int(color[1]), int(color[2]))))
    if 0 not in values:
        if DEFAULT_BACKGROUND.name in names:
            raise ValidationError("the schema names a class 'background' but has no value 0")
        classes.append(DEFAULT_BACKGROUND)
    return sorted(classes, key=lambda c: c.value)
