"""The rotary function's two forms on Llama-3-8B's q and k (session 14): forward and backward, CUDA-event timed.

    PYTHONPATH=$PWD python benchmarks/results/rotary-h200/halves-8b/rotary_micro.py     (on a CUDA GPU)

"roll": the first form (x * cos, roll(x, half), addcmul); "halves": attention.RotaryEmbedding as shipped.
"""
import torch

from falcon_desktop.attention import RotaryEmbedding


class RolledRotary(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query, key, cos, sin):
        half = cos.shape[-1] // 2
        cos, sin = cos.unsqueeze(2).to(query.dtype), sin.unsqueeze(2).to(query.dtype)
        signed = torch.cat((-sin[..., :half], sin[..., half:]), -1)
        ctx.save_for_backward(cos, signed)
        return tuple(torch.addcmul(x * cos, x.roll(half, -1), signed) for x in (query, key))

    @staticmethod
    def backward(ctx, grad_query, grad_key):
        cos, signed = ctx.saved_tensors
        half = cos.shape[-1] // 2
        return (*(torch.addcmul((grad * signed).roll(half, -1), grad, cos) for grad in (grad_query, grad_key)),
                None, None)


def main() -> None:
    batch, length, heads, kv_heads, head_dim = 32, 512, 32, 8, 128
    options = dict(device="cuda", dtype=torch.bfloat16, requires_grad=True)
    query = torch.randn(batch, length, heads, head_dim, **options)
    key = torch.randn(batch, length, kv_heads, head_dim, **options)
    inverse = 1 / (500000 ** (torch.arange(0, head_dim, 2, device="cuda").float() / head_dim))
    angles = torch.outer(torch.arange(length, device="cuda").float(), inverse)
    embedding = torch.cat((angles, angles), -1)[None].expand(batch, -1, -1)
    cos, sin = embedding.cos(), embedding.sin()

    def run(function) -> None:
        rotated = function.apply(query, key, cos, sin)
        torch.autograd.backward(rotated, [torch.ones_like(x) for x in rotated])

    rolled, halves = RolledRotary.apply(query, key, cos, sin), RotaryEmbedding.apply(query, key, cos, sin)
    print("max diff fwd", *((a.float() - b.float()).abs().max().item() for a, b in zip(rolled, halves)))
    timings: dict[str, list[float]] = {}
    for name, function in [("roll", RolledRotary), ("halves", RotaryEmbedding)] * 3:
        for _ in range(3):
            run(function)
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(50):
            run(function)
        end.record()
        torch.cuda.synchronize()
        timings.setdefault(name, []).append(round(start.elapsed_time(end) / 50, 3))
    print("ms per q+k forward+backward (incl. ones_like grads):", timings)


if __name__ == "__main__":
    main()
