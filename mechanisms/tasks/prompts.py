"""The paper's task prompts, verbatim (§2.3, §6.2). One place, used by training, claims and adapters."""

BOX_PROMPT = "Please provide the bounding box coordinates of the {cls}."
LIST_PROMPT = "List all objects in the image. Choose only from {classes}."
BINARY_PROMPT = "Is there a {cls} in the image?"


def box_prompt(cls: str) -> str:
    return BOX_PROMPT.format(cls=cls)


def list_prompt(classes: list[str] | tuple[str, ...]) -> str:
    return LIST_PROMPT.format(classes=", ".join(classes))


def binary_prompt(cls: str) -> str:
    return BINARY_PROMPT.format(cls=cls)
