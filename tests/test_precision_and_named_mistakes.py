"""Correct float32 answers pass, and the mistakes of issues 17 and 18 are named where students make them.

* 07's sinusoid table: a correct table computed in float32 drifts from the float64 reference by about
  1e-7 * pos, so its checks allow an error that grows with the number of positions; the embedding and
  GPT checks set known position codes, so a float32 table costs no points there either.
* 01's [x_t; h_{t-1}] order is named in the check of every gate it is made in.
* 04's weights stored after dropout are seen by a check in training mode.
"""

import contextlib
import io
import re

import pytest
import torch

import notebooks
from conftest import ROOT
from submissions import named
from shared.checks import CheckFailed, Checker, compare

REGION = re.compile(r"### BEGIN SOLUTION\n.*?### END SOLUTION(\n|$)", re.S)


sources = notebooks.solution_sources


def run_cells(assignment: str, cell_ids: list[str], replace: dict[str, str] | None = None) -> dict:
    """Run the setup cell and the given cells (hidden checks included: they compare with autograder/references here)."""
    return notebooks.run_cells(assignment, ["setup", *cell_ids], replace=replace, hidden=True).namespace


def with_first_region(source: str, body: str) -> str:
    """`source` with its first solution region's code replaced by `body`."""
    edited, count = REGION.subn(lambda _: f"### BEGIN SOLUTION\n{body}### END SOLUTION\n", source, count=1)
    assert count == 1, "no solution region"
    return edited


# 07: the sinusoid table in float32 ------------------------------------------------------------------

FLOAT32_TABLES = {  # correct ways to write the table in float32, as students do
    "pow_and_divide": """\
        positions = torch.arange(n_positions).float().unsqueeze(1)
        denominators = torch.pow(10000, torch.arange(0, dimension, 2).float() / dimension)
        table = torch.zeros(n_positions, dimension)
        table[:, 0::2] = torch.sin(positions / denominators)
        table[:, 1::2] = torch.cos(positions / denominators)
        return table
""",
    "exp_of_log": """\
        positions = torch.arange(0, n_positions, dtype=torch.float).unsqueeze(1)
        frequencies = torch.exp(torch.arange(0, dimension, 2).float() * (-math.log(10000.0) / dimension))
        table = torch.zeros(n_positions, dimension)
        table[:, 0::2] = torch.sin(positions * frequencies)
        table[:, 1::2] = torch.cos(positions * frequencies)
        return table
""",
}
CORRECT = FLOAT32_TABLES["pow_and_divide"]
HANDOUT_EXPONENT = CORRECT.replace("torch.arange(0, dimension, 2).float()", "torch.arange(0, dimension // 2).float()")
SWAPPED = (CORRECT.replace("torch.sin(positions", "torch.tmp(positions").replace("torch.cos(positions", "torch.sin(positions")
           .replace("torch.tmp(positions", "torch.cos(positions"))
GPT_CELLS = ["layer_norm", "multi_headed_attention", "block", "gpt_embedding", "gpt"]


def embedding_cell(body: str) -> dict[str, str]:
    return {"gpt_embedding": with_first_region(sources("07_gpt")["gpt_embedding"], body)}


def table_from(body: str, n_positions: int, dimension: int) -> torch.Tensor:
    """The table (n_positions, dimension) that create_sinusoidal_embeddings written as `body` returns."""
    namespace = run_cells("07_gpt", ["gpt_embedding"], embedding_cell(body))
    return namespace["GPTEmbedding"](3, dimension, 1).create_sinusoidal_embeddings(n_positions, dimension)


def test_a_fixed_float32_tolerance_rejects_a_correct_float32_table_at_128_positions():
    """The issue: rtol 1e-5 and atol 1e-6 at any size fail a correct float32 table of 128 positions."""
    reference = torch.load(ROOT / "shared/references/07_gpt.pt", weights_only=True)["sinusoidal_embeddings/128_positions"]
    table = table_from(CORRECT, 128, 64)
    assert table.dtype == reference.dtype == torch.float32
    with pytest.raises(CheckFailed, match="differs from the expected values"):
        compare("sinusoidal_embeddings/128_positions", table, reference, rtol=1e-5, atol=1e-6)
    assert (table - reference).abs().max() > 1e-6


@pytest.mark.parametrize("name", FLOAT32_TABLES)
def test_correct_float32_tables_pass_the_sinusoid_checks_up_to_512_positions(name):
    """The visible checks (10 and 128 positions) and the hidden ones (up to 512 positions) accept a float32 table."""
    namespace = run_cells("07_gpt", ["gpt_embedding", "test_sinusoidal_embeddings"], embedding_cell(FLOAT32_TABLES[name]))
    tolerance = namespace["table_tolerance"](512)
    hidden = torch.load(ROOT / "autograder/references/07_gpt.pt", weights_only=True)["sinusoidal_embeddings/512_32"]
    assert hidden["atol"] == tolerance["atol"] and hidden["value"].shape == (512, 32)
    compare("512 positions", table_from(FLOAT32_TABLES[name], 512, 32), hidden["value"], rtol=hidden["rtol"], atol=hidden["atol"])


@pytest.mark.parametrize("body, mistake", [(HANDOUT_EXPONENT, "exponent_k_over_d"), (SWAPPED, "sin_cos_swapped")])
def test_wrong_float32_tables_still_fail_and_are_named_at_10_and_at_512_positions(body, mistake):
    with pytest.raises(CheckFailed) as visible:
        run_cells("07_gpt", ["gpt_embedding", "test_sinusoidal_embeddings"], embedding_cell(body))
    assert str(visible.value).startswith("Check 'sinusoidal_embeddings': " + named("07_gpt", mistake))
    tolerance = run_cells("07_gpt", ["gpt_embedding", "test_sinusoidal_embeddings"])["table_tolerance"](512)
    with pytest.raises(CheckFailed) as hidden:
        Checker("07_gpt").check_hidden("sinusoidal_embeddings/512_32", table_from(body, 512, 32), **tolerance)
    # Swapped tables stop at the visible check of position 0, so no hidden output is recorded for them.
    assert (named("07_gpt", mistake) in str(hidden.value)) == (mistake == "exponent_k_over_d")


@pytest.mark.parametrize("check, cells", [("test_gpt_embedding", ["gpt_embedding"]), ("test_gpt", GPT_CELLS)])
def test_a_correct_float32_table_costs_no_points_in_the_embedding_and_gpt_checks(check, cells):
    """Those checks compare in float64 at 1e-6: a float32 table's rounding used to fail them; they now set known codes."""
    run_cells("07_gpt", [*cells, check], embedding_cell(CORRECT))
    wrong_forward = sources("07_gpt")["gpt_embedding"].replace("+ self.position_encoding[: tokens.shape[1]]", "")
    with pytest.raises(CheckFailed, match=re.escape(named("07_gpt", "positions_not_added"))):
        run_cells("07_gpt", ["gpt_embedding", "test_gpt_embedding"], {"gpt_embedding": wrong_forward})


# 01: [x_t; h_{t-1}] in every gate --------------------------------------------------------------------

# The first check each swap fails: with h_0 = 0 the swap happens to leave c̃_1 unchanged for the notebook's W_c.
GATES = {"forget_gate": "f_1", "input_gate": "i_1", "output_gate": "o_1", "candidate_cell": "candidate_cell_any_input"}
GATE_NAMES = {"forget_gate": "forget gate f_t", "input_gate": "input gate i_t", "output_gate": "output gate o_t",
              "candidate_cell": "candidate cell c̃_t"}


def test_the_swapped_stacking_is_named_in_the_check_of_every_gate():
    """A student who stacks [x_t; h_{t-1}] in all four gates is told so by each gate's check, naming that gate."""
    cells = sources("01_lstm_by_hand")
    swapped = {gate: cells[gate].replace("torch.cat([h_prev, x_t])", "torch.cat([x_t, h_prev])") for gate in GATES}
    assert all(swapped[gate] != cells[gate] for gate in GATES)
    for gate, first_check in GATES.items():
        with pytest.raises(CheckFailed) as failure:
            run_cells("01_lstm_by_hand", ["parameters", gate, f"test_{gate}"], swapped)
        message = str(failure.value)
        title = f"the {GATE_NAMES[gate]} reads [x_t; h_{{t-1}}]"
        assert message.startswith(f"Check '{first_check}': the output matches a known mistake: {title}")
        assert "W_f, W_i, W_o and W_c" in message


# 04: the weights kept before dropout -----------------------------------------------------------------

AFTER_DROPOUT = """\
        d = queries.shape[-1]
        weights = self.dropout(masked_softmax(torch.bmm(queries, keys.transpose(1, 2)) / math.sqrt(d), valid_lens))
        self.attention_weights = weights
        return weights @ values
"""


TRAINING_BLOCK = re.compile(r"\n(# In training mode too.*?\n)print\(", re.S)


@pytest.mark.parametrize("global_seed", [1, 2])
def test_weights_stored_after_dropout_are_named_by_the_training_mode_check(global_seed):
    """Whatever the student's random state, the check draws the same dropout mask, so the recorded mistake matches."""
    wrong = {"dot_product_attention": with_first_region(sources("04_attention")["dot_product_attention"], AFTER_DROPOUT)}
    torch.manual_seed(global_seed)
    with pytest.raises(CheckFailed) as failure:
        run_cells("04_attention", ["masked_softmax", "dot_product_attention", "test_dot_product_attention"], wrong)
    expected = "Check 'dot_product_attention/training_weights': " + named("04_attention", "weights_stored_after_dropout")
    assert str(failure.value).startswith(expected)


def test_the_training_mode_check_leaves_the_random_state_alone():
    """It fixes its dropout mask inside torch.random.fork_rng: the student's later random draws are unchanged."""
    namespace = run_cells("04_attention", ["masked_softmax", "dot_product_attention"])
    namespace.update(zip(["queries", "keys", "values"], namespace["seeded_randn"](1, (2, 3, 4), (2, 6, 4), (2, 6, 5))))
    namespace["valid_lens"] = torch.tensor([6, 2])
    (block,) = TRAINING_BLOCK.findall(sources("04_attention")["test_dot_product_attention"])
    torch.manual_seed(123)
    state = torch.get_rng_state()
    with contextlib.redirect_stdout(io.StringIO()):
        exec(block, namespace)
    assert torch.equal(torch.get_rng_state(), state)
    assert namespace["training"].training and namespace["training"].dropout.p == 0.5
