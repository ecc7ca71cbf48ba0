"""How the three components connect, by the tensor names in the manifest (never by position or a name in code):
the image encoder's one input takes the preprocessed pixels; the text encoder's inputs are tokenizer outputs of the
same names; the head's inputs are named after the two encoders' outputs, and its one output is the logits."""

from __future__ import annotations

from dataclasses import dataclass

from fusionrt.runtime.errors import BundleError, InputError
from fusionrt.runtime.tokenize import TOKEN_NAMES

__all__ = ["Wiring"]


@dataclass(frozen=True)
class Wiring:
    image_input: str
    image_output: str
    text_inputs: tuple
    text_output: str
    head_inputs: tuple  # the head's own order
    logits: str

    @classmethod
    def of(cls, image, text, head) -> "Wiring":
        """From the image encoder's, text encoder's and head's Components; BundleError when they do not connect."""
        for comp, ins, outs in ((image, 1, 1), (text, None, 1), (head, 2, 1)):
            if (ins is not None and len(comp.inputs) != ins) or len(comp.outputs) != outs:
                raise BundleError(
                    f"manifest: {comp.name} has inputs {[t.name for t in comp.inputs]} and outputs "
                    f"{[t.name for t in comp.outputs]}; expected {ins or 'one or more'} input(s) and {outs} output. "
                    "Re-export the bundle with `fusionrt export`.")
        wiring = cls(image.inputs[0].name, image.outputs[0].name, tuple(t.name for t in text.inputs),
                     text.outputs[0].name, tuple(t.name for t in head.inputs), head.outputs[0].name)
        if wiring.image_output == wiring.text_output or set(wiring.head_inputs) != {wiring.image_output,
                                                                                    wiring.text_output}:
            raise BundleError(
                f"manifest: the fusion head's inputs {list(wiring.head_inputs)} must be named after the encoders' "
                f"distinct outputs ('{wiring.image_output}', '{wiring.text_output}'). Re-export the bundle.")
        unknown = [n for n in wiring.text_inputs if n not in TOKEN_NAMES]
        if unknown:
            raise BundleError(f"manifest: text encoder inputs {unknown} are not tokenizer outputs: expected some of "
                              f"{list(TOKEN_NAMES)}. Re-export the bundle with `fusionrt export`.")
        return wiring

    def text_feeds(self, tokens) -> dict:
        """The text encoder's feeds out of the tokenizer's outputs."""
        missing = [name for name in self.text_inputs if name not in tokens]
        if missing:
            raise InputError(f"the text encoder takes {list(self.text_inputs)}, found {sorted(tokens)}: pass what the "
                             "pipeline's tokenizer returns (Pipeline.prepare).")
        return {name: tokens[name] for name in self.text_inputs}
