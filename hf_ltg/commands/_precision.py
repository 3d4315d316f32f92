"""16-bit options (--bf16/--fp16 for training, --dtype for generate and perplexity) and the one-time
note when this CPU emulates the requested 16-bit matrix products."""

DTYPES = ("float32", "bfloat16", "float16")


def add_training_precision_options(group) -> None:
    precision = group.add_mutually_exclusive_group()
    precision.add_argument("--bf16", action="store_true", help="bfloat16 mixed precision (autocast); on a CPU "
                                                               "without native bf16 products it is slower than fp32")
    precision.add_argument("--fp16", action="store_true", help="float16 mixed precision (autocast); on a CPU "
                                                               "without native 16-bit products it is slower than fp32")


def add_dtype_option(parser) -> None:
    parser.add_argument("--dtype", choices=DTYPES, default="float32",
                        help="weights and activations (default: %(default)s); 16-bit halves the memory, but on a CPU "
                             "without native 16-bit products it is slower")


def training_dtype(args) -> str:
    return "bfloat16" if args.bf16 else "float16" if args.fp16 else "float32"


_noted: set[str] = set()


def note_if_emulated(dtype_name: str, alternative: str, device: str | None = None) -> str | None:
    """Say once per process (on stderr) when `dtype_name` is 16-bit and this CPU emulates its matrix
    products: the probe's verdict, a measured product time against fp32, and `alternative`. Returns
    the note, or None (fp32, a GPU, native 16-bit products, or already said)."""
    import sys

    import torch

    from ..gpt.kernels_ltg_gpt import native_16bit_matmul

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, dtype_name)
    if dtype == torch.float32 or device != "cpu" or dtype_name in _noted or native_16bit_matmul(dtype):
        return None
    _noted.add(dtype_name)
    ratio = _product_time_ratio(dtype)
    note = (f"hf-ltg: note: {dtype_name} is emulated on this CPU (it has no native {dtype_name} matrix product: "
            f"oneDNN's probe failed), so 16-bit products run slower than fp32 ones here (a 64x1024 by 1024x1024 "
            f"product took {ratio:.1f}x as long as in float32; hf_ltg's GPT linears multiply in fp32 on the "
            f"16-bit operands, so its steps slow down less); {alternative} for float32. Carrying on.")
    print(note, file=sys.stderr, flush=True)
    return note


def _product_time_ratio(dtype, repeats: int = 3) -> float:
    """Time of a 64x1024 @ 1024x1024 product in `dtype` over the same in float32 (best of `repeats`)."""
    import time

    import torch

    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(64, 1024, generator=generator), torch.randn(1024, 1024, generator=generator)

    def best(x, y):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            x @ y
            times.append(time.perf_counter() - start)
        return min(times)

    return best(a.to(dtype), b.to(dtype)) / best(a, b)
