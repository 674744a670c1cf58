"""Each option is documented once, in its dataclass's ``Args:`` block, and config/options.md is
generated from those blocks: every field has an entry, and the committed file equals the code's."""

from dataclasses import dataclass
from pathlib import Path

import pytest

from nabla.config import TrainConfig
from nabla.methods import SamplerConfig, registry
from nabla.options import option_docs, undocumented_options
from nabla.options_reference import options_reference, options_table

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Base:
    """Base.

    Args:
        a: first,
            continued.
        b: second: with a colon.

    Text after the block.
    """

    a: int = 1
    b: str = "x"


@dataclass
class Child(Base):
    """Child.

    Args:
        c: third.
    """

    c: float = 2.0
    d: bool = False


def test_args_block_parsing_and_inheritance():
    assert option_docs(Base) == {"a": "first, continued.", "b": "second: with a colon."}
    assert option_docs(Child) == {"a": "first, continued.", "b": "second: with a colon.", "c": "third."}
    assert undocumented_options(Child) == (["d"], [])
    with pytest.raises(ValueError, match="d"):
        options_table(Child)


@pytest.mark.parametrize("cls", [TrainConfig, SamplerConfig, *sorted({m.Options for m in registry().values()},
                                                                    key=lambda c: c.__name__)],
                         ids=lambda c: c.__name__)
def test_every_option_is_documented(cls):
    assert undocumented_options(cls) == ([], [])


def test_committed_reference_is_the_generated_one():
    committed = (ROOT / "config" / "options.md").read_text()
    assert committed == options_reference(), "config/options.md is stale: run python -m nabla options-doc"
