#!/usr/bin/env python3
"""cu2cpp.py IN.cu OUT.cpp: the CUDA emulator's source rewrite (tests/cuda_emu/include/cuda_emu.h).

Two CUDA constructs are not C++ and are rewritten; everything else compiles as is against the emulator's headers:
  kernel<<<grid, block[, smem[, stream]]>>>(args)
      -> cuda_emu_launch(dim3(grid), dim3(block), (size_t)(smem), stream, "kernel", "IN.cu", line,
                         [=, cuda_emu_args = std::make_tuple(args)]() { std::apply(<kernel(a...)>, cuda_emu_args); })
         (the arguments are evaluated once, at the launch, as on the device)
  extern __shared__ [__align__(n)] T name[];
      -> T *name = (T *)cuda_emu_dyn_smem();
Line numbers are kept (the replacement carries the newlines of what it replaces, and a #line directive names
IN.cu), so compiler messages and the emulator's point at the original source.
"""
import re
import sys


def split_top(s, sep=","):
    """s split at top-level separators (outside (), [], {}, <> is not tracked: launch configs have none)."""
    out, depth, cur = [], 0, []
    for ch in s:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == sep and depth == 0:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return out


def kernel_start(src, end):
    """index where the kernel expression ending at src[end] (exclusive) starts: an identifier, possibly with
    a template argument list <...>."""
    i = end
    if src[i - 1] == ">":
        depth = 0
        while True:
            i -= 1
            if src[i] == ">":
                depth += 1
            elif src[i] == "<":
                depth -= 1
                if depth == 0:
                    break
    while i > 0 and (src[i - 1].isalnum() or src[i - 1] in "_:"):
        i -= 1
    return i


def matching(src, i, open_ch, close_ch):
    depth = 0
    for j in range(i, len(src)):
        if src[j] == open_ch:
            depth += 1
        elif src[j] == close_ch:
            depth -= 1
            if depth == 0:
                return j
    raise SystemExit("cu2cpp: unbalanced %s at offset %d" % (open_ch, i))


def rewrite(src, name):
    src = re.sub(r"extern\s+__shared__\s+(?:__align__\(\s*\d+\s*\)\s+)?([A-Za-z_][\w\s\*]*?)\s*(\w+)\s*\[\s*\]\s*;",
                 lambda m: "%s *%s = (%s *)cuda_emu_dyn_smem();" % (m.group(1), m.group(2), m.group(1)), src)
    out, pos = [], 0
    while True:
        a = src.find("<<<", pos)
        if a < 0:
            break
        b = src.find(">>>", a)
        k0 = kernel_start(src, a)
        kernel = src[k0:a]
        p = b + 3
        while src[p].isspace():
            p += 1
        if src[p] != "(":
            raise SystemExit("cu2cpp: %s: no argument list after the launch of %s" % (name, kernel))
        q = matching(src, p, "(", ")")
        cfg = split_top(src[a + 3:b])
        if not 2 <= len(cfg) <= 4:
            raise SystemExit("cu2cpp: %s: launch of %s has %d configuration values" % (name, kernel, len(cfg)))
        grid, block = cfg[0].strip(), cfg[1].strip()
        smem = cfg[2].strip() if len(cfg) > 2 else "0"
        stream = cfg[3].strip() if len(cfg) > 3 else "(cudaStream_t)0"
        line = src.count("\n", 0, k0) + 1
        replaced = src[k0:q + 1]
        # the arguments are evaluated once, at the launch (into the closure's tuple), as CUDA does
        call = ('cuda_emu_launch(dim3(%s), dim3(%s), (size_t)(%s), %s, "%s", "%s", %d, '
                '[=, cuda_emu_args = std::make_tuple(%s)]() { '
                'std::apply([](auto const &...a) { %s(a...); }, cuda_emu_args); })') % (
            " ".join(grid.split()), " ".join(block.split()), " ".join(smem.split()), " ".join(stream.split()),
            " ".join(kernel.split()), name, line, src[p + 1:q], kernel)
        # keep the line count: the args keep their own newlines; those of the config and name go after
        extra = replaced.count("\n") - call.count("\n")
        out.append(src[pos:k0])
        out.append(call + "\n" * max(extra, 0))
        pos = q + 1
    out.append(src[pos:])
    return "".join(out)


def main():
    if len(sys.argv) != 3:
        raise SystemExit("usage: cu2cpp.py IN.cu OUT.cpp")
    path, dest = sys.argv[1], sys.argv[2]
    with open(path, encoding="utf-8") as f:
        src = f.read()
    name = path.replace("\\", "/").split("/")[-1]
    text = '#line 1 "%s"\n%s' % (path, rewrite(src, name))
    with open(dest, "w", encoding="utf-8") as f:
        f.write(text)


if __name__ == "__main__":
    main()
