"""Per-sample operation counts of the kernels in ``src/fastmoe/_kernels.pyx`` (unweighted data).

Counted from the code as written (every ``w *`` multiplies even when ``w = 1.0``; ``_fill_design``
multiplies by the leading 1; the max shifts' comparisons are not counted). Notation: ``d`` expert
features, ``g`` gating features (``g = d`` for standard gating), ``k`` experts, ``K`` classes,
``pg = g + 1``, ``pe = d + 1``, ``mg = pg (pg + 1) / 2``, ``me = pe (pe + 1) / 2`` (packed triangles),
``ngp = k (k - 1) / 2`` gating block pairs, ``nep = K (K - 1) / 2`` class pairs.

Building blocks (flops = additions, subtractions, multiplications; divisions apart):

- ``_gate_logits``: ``2 k g`` (dot-product loops).  ``_expert_logits``: ``2 k K d``.
- ``_forward_block`` forms the probabilities directly (the common path):
  gate logits, ``k`` max-shift subtractions, expert logits, ``kK`` max-shift subtractions;
  ``kK + k`` exponentials (``fastmoe_exp``: one flat loop over the ``kK`` expert logits, one over the
  ``k`` gating logits); ``_normalize`` of the gate (``2k`` flops, 1 division: one reciprocal, then
  multiplications) and of each expert (``2K`` flops, 1 division each); ``tau_i = pi_i f_i(y)`` and their
  sum (``2k``); one reciprocal and ``k`` multiplications to normalise ``tau``; one ``log`` of the sum
  (the log-likelihood)
  = ``2kg + 2kKd + 3kK + 6k`` flops, ``k + 2`` divisions, ``kK + k`` exp, 1 log.
  The log-space fallback (``_forward_logspace``) runs only when every ``pi_i f_i(y)``
  underflows (sum < 1e-280), never in the benchmark data: not counted.
- The exponentials are ``fastmoe_exp`` (the extern block at the top of ``_kernels.pyx``): a branch-free
  polynomial that vectorises in the avx2/avx512 kernel variants (``-march=x86-64-v3``/``-v4``; see
  setup.py), libm's ``exp`` in the baseline variant. ``exp_loops`` lists the lengths of the two loops
  (``kK``, ``k``), which the roofline prices at the micro-benchmark's rate for loops of that length.

``e_step`` = ``_forward_block`` + 1 (log-likelihood sum).

``newton_pass`` = ``_forward_block`` plus
  ``2`` (``row[0] += w ll``) + ``mg + me`` (two ``_fill_design``; with ``Z is X`` the same outer product
  is formed twice) + gating ``(k-1)(2 + 2 pg)`` (gradient rows) + ``ngp (3 + 2 mg)`` (Hessian pairs)
  + experts ``2k`` (weights) + ``k (K-1)(2 + 2 pe)`` (gradient rows) + ``k nep (3 + 2 me)`` (Hessian pairs).
  No Q values (they are a separate pass, ``q_values``, run only when a step is halved).
  The Hessian terms count the multiply-adds of the accumulation as the mathematics needs them
  (``2 mg`` / ``2 me`` flops per pair and sample); a blocked or reorganised accumulation does the same
  multiply-adds, so only the small scalar bookkeeping terms depend on how the loops are written.

The "axpy" part (``dst[m] += c * v[m]`` accumulation loops, the kernel's vectorisable loops) is
``2 (k-1) pg + 2 ngp mg + 2 k (K-1) pe + 2 k nep me``; the "dot" part (logits) ``2kg + 2kKd``; the rest
is scalar bookkeeping.

Memory traffic per sample is ``8 d`` (X) ``+ 8`` (y, int64) bytes read, plus ``8 k`` written by the
E-step's responsibilities: under 100 bytes per several hundred flops and ~15-25 exponentials, so every
pass is compute bound (checked: 1e6 samples stream in ~5 ms at the measured bandwidth, against
tens to hundreds of ms per pass).
"""

from __future__ import annotations


def _blocks(d, g, k, K):
    pg, pe = g + 1, d + 1
    return pg, pe, pg * (pg + 1) // 2, pe * (pe + 1) // 2, k * (k - 1) // 2, K * (K - 1) // 2


def forward(d, g, k, K):
    dot = 2 * k * g + 2 * k * K * d
    return {"flops": dot + 3 * k * K + 6 * k, "dot": dot, "axpy": 0,
            "div": k + 2, "exp": k * K + k, "exp_loops": [k * K, k], "log": 1}


def e_step(d, g, k, K):
    out = forward(d, g, k, K)
    out["flops"] += 1
    return out


def newton_pass(d, g, k, K):
    pg, pe, mg, me, ngp, nep = _blocks(d, g, k, K)
    out = forward(d, g, k, K)
    axpy = 2 * (k - 1) * pg + 2 * ngp * mg + 2 * k * (K - 1) * pe + 2 * k * nep * me
    extra = (2 + mg + me + (k - 1) * (2 + 2 * pg) + ngp * (3 + 2 * mg)
             + 2 * k + k * (K - 1) * (2 + 2 * pe) + k * nep * (3 + 2 * me))
    out["flops"] += extra
    out["axpy"] = axpy
    out["hess_width"] = me  # the axpy loop length that dominates
    return out


COUNTS = {"estep": e_step, "newton_pass": newton_pass, "em_iteration": newton_pass}


def counts(group, d, k, K, g=None):
    """Per-sample counts for a benchmark group (``em_iteration``: one fused pass; the solves are O(1))."""
    return COUNTS[group](d, d if g is None else g, k, K)


if __name__ == "__main__":
    for shape in ((2, 3, 3), (10, 4, 5)):
        for group in ("estep", "newton_pass"):
            print(f"d={shape[0]} k={shape[1]} K={shape[2]} {group}: {counts(group, *shape)}")
