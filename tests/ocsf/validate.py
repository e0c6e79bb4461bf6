"""Validates OCSF events (JSON lines) against the published OCSF schema.

    python tests/ocsf/validate.py VERSION FILE [CLASS_UID ...]

The schema is the one the `ocsf-json-schema` package ships for VERSION (no network):
each event is checked with a JSON Schema (draft 2020-12) validator against the JSON
schema of its class. Every CLASS_UID given must occur at least once. Prints every
violation; exits 1 if there is any.
"""

import json
import sys

from jsonschema import Draft202012Validator
from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema


def main():
    version, path, *required = sys.argv[1:]
    schema = OcsfJsonSchemaEmbedded(get_ocsf_schema(version=version))
    validators = {}
    seen = {}
    errors = 0
    with open(path) as f:
        for n, line in enumerate(f, 1):
            event = json.loads(line)
            uid = event.get("class_uid")
            if event.get("metadata", {}).get("version") != version:
                print(f"line {n}: metadata.version is not {version}")
                errors += 1
            if uid not in validators:
                name = schema.lookup_class_name_from_uid(class_uid=uid)
                validators[uid] = Draft202012Validator(schema.get_class_schema(name))
            for e in validators[uid].iter_errors(event):
                path_ = "/".join(str(p) for p in e.absolute_path)
                print(f"line {n} (class {uid}): {path_}: {e.message}")
                errors += 1
            seen[uid] = seen.get(uid, 0) + 1
    for uid in required:
        if int(uid) not in seen:
            print(f"no event of class {uid}")
            errors += 1
    print(f"{sum(seen.values())} events, classes {seen}, {errors} violations")
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
