"""Helpers for the workflow tests. The executor itself is the package's (poseanimate.headless.executor)."""


def widget_names(spec: dict) -> list:
    """Names of a node's widget values in UI-format ``widgets_values`` order, from INPUT_TYPES.

    COMBO, INT, FLOAT, STRING and BOOLEAN inputs are widgets unless ``forceInput`` (a socket only);
    an input with ``control_after_generate`` (a seed) is followed by the frontend's control widget (None).
    """
    names = []
    for section in ("required", "optional"):
        for name, s in spec.get(section, {}).items():
            if len(s) > 1 and s[1].get("forceInput"):
                continue
            if isinstance(s[0], list) or s[0] in ("INT", "FLOAT", "STRING", "BOOLEAN"):
                names.append(name)
                if len(s) > 1 and s[1].get("control_after_generate"):
                    names.append(None)
    return names
