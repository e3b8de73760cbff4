#!/usr/bin/env python3
"""Lists C++ functions longer than a limit (lines from the signature to the closing brace).

    scripts/function_lengths.py [--limit 120] [--top N] [paths...]

Default paths: src include loaders tools examples bench (tests are not checked). Exits 1 when a
function is over the limit, so a test can keep it true.

A heuristic, not a parser: comments, string/char literals (raw strings too) and preprocessor
lines are blanked, then braces are matched. A `{` opened at namespace or class scope whose
header (the text since the previous `;`, `{` or `}`) has a parenthesis and is not a class,
namespace, enum or `= {` initializer starts a function; lambdas and local classes count towards
the function around them. Limits: code in both branches of an `#if`/`#else` is read as if both
were compiled (fine while each branch balances its braces); a macro that expands to a function
header is read as a function; a brace-initialised member in a constructor's initializer list
(`x_{1}`) is recognised only when an identifier or `>` directly precedes its `{`.
"""
import argparse
import os
import re
import sys

DEFAULT_PATHS = ["src", "include", "loaders", "tools", "examples", "bench"]
EXTENSIONS = (".cpp", ".cc", ".hpp", ".h")
SCOPE_KEYWORD = re.compile(r"^(?:(?:inline|typedef|extern|export)\s+)*(namespace|class|struct|union|enum)\b")
CONTROL = re.compile(r"^(?:if|for|while|switch|catch|do|else|try)\b")


def blank(text):
    """Returns text with comments, literals and preprocessor lines replaced by spaces (newlines kept)."""
    out = []
    i, n = 0, len(text)
    line_start = True
    while i < n:
        c = text[i]
        if line_start and c == "#" or (line_start and c in " \t" and text[i:].lstrip(" \t").startswith("#")):
            j = i
            while j < n:  # to the end of the directive, following backslash continuations
                k = text.find("\n", j)
                if k < 0:
                    k = n
                if k > 0 and text[k - 1] == "\\":
                    j = k + 1
                    continue
                break
            out.append(re.sub(r"[^\n]", " ", text[i:k]))
            i = k
            continue
        if c == "\n":
            line_start = True
            out.append(c)
            i += 1
            continue
        if c not in " \t":
            line_start = False
        if text.startswith("//", i):
            k = text.find("\n", i)
            k = n if k < 0 else k
            out.append(" " * (k - i))
            i = k
        elif text.startswith("/*", i):
            k = text.find("*/", i + 2)
            k = n if k < 0 else k + 2
            out.append(re.sub(r"[^\n]", " ", text[i:k]))
            i = k
        elif c == "R" and text.startswith('R"', i) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            m = re.match(r'R"([^()\\ ]{0,16})\(', text[i:])
            if not m:
                out.append(c)
                i += 1
                continue
            end = ")" + m.group(1) + '"'
            k = text.find(end, i + m.end())
            k = n if k < 0 else k + len(end)
            out.append(re.sub(r"[^\n]", " ", text[i:k]))
            i = k
        elif c in "\"'":
            if c == "'" and i > 0 and text[i - 1].isalnum():  # digit separator: 1'000'000
                out.append(" ")
                i += 1
                continue
            j = i + 1
            while j < n and text[j] != c and text[j] != "\n":
                j += 2 if text[j] == "\\" else 1
            j = min(j + 1, n)
            out.append(c + " " * (j - i - 2) + c if j - i >= 2 else " " * (j - i))
            i = j
        else:
            out.append(c)
            i += 1
    return "".join(out)


def strip_template_prefix(header):
    header = header.strip()
    while header.startswith("template"):
        k = header.find("<")
        if k < 0:
            return header
        depth = 0
        for j in range(k, len(header)):
            if header[j] == "<":
                depth += 1
            elif header[j] == ">":
                depth -= 1
                if depth == 0:
                    header = header[j + 1:].strip()
                    break
        else:
            return header
    return header


def function_name(header):
    """The qualified name before the first top-level '(' of a function header."""
    m = re.search(r"((?:[A-Za-z_~][\w]*\s*(?:<[^(){};]*>)?\s*::\s*)*~?(?:operator\s*[^\s(]+|[A-Za-z_]\w*))\s*\(", header)
    return re.sub(r"\s+", "", m.group(1)) if m else header.strip()[:40]


def functions(path):
    """Yields (first line, last line, name) of every function in a file."""
    with open(path, encoding="utf-8", errors="replace") as f:
        text = blank(f.read())
    scopes = []  # "ns" (namespace, class, extern "C"), "fn" or "other"
    header, header_line = [], None
    starts = []  # for "fn" scopes: (line, name)
    line = 1
    for i, c in enumerate(text):
        if c == "\n":
            line += 1
        in_code_scope = all(s == "ns" for s in scopes)
        if c == "{":
            h = " ".join("".join(header).split())
            kind = "other"
            if in_code_scope:
                hs = strip_template_prefix(h)
                if h == "" or re.match(r"^extern\s*$", hs) or SCOPE_KEYWORD.match(hs) or hs.startswith("namespace"):
                    kind = "ns"
                elif "(" in hs and not CONTROL.match(hs) and not re.search(r"=\s*$", hs) \
                        and not re.search(r"\)\s*:[^:].*[\w>]\s*$", hs) and not re.search(r"=\s*\[", hs):
                    kind = "fn"
            scopes.append(kind)
            if kind == "fn":
                starts.append((header_line or line, function_name(strip_template_prefix(h))))
            if kind != "other" or not in_code_scope:
                header, header_line = [], None
            else:
                header.append(c)
        elif c == "}":
            if not scopes:
                continue
            kind = scopes.pop()
            if kind == "fn":
                first, name = starts.pop()
                yield first, line, name
            if kind == "other" and all(s == "ns" for s in scopes):
                header.append(c)  # an initializer inside a header: `x_{1}` or `= {...}`
            else:
                header, header_line = [], None
        elif c == ";" and all(s == "ns" for s in scopes):
            header, header_line = [], None
        elif all(s == "ns" for s in scopes):
            if header_line is None and not c.isspace():
                header_line = line
            if header_line is not None:
                header.append(c)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=120, help="report functions with more lines than this")
    ap.add_argument("--top", type=int, default=0, help="also list the N longest functions")
    ap.add_argument("--root", default=".", help="the checkout to scan (paths are relative to it)")
    ap.add_argument("paths", nargs="*", default=DEFAULT_PATHS)
    args = ap.parse_args()

    found = []
    for p in args.paths:
        full = os.path.join(args.root, p)
        files = [full] if os.path.isfile(full) else [
            os.path.join(d, f) for d, _, fs in os.walk(full) for f in fs if f.endswith(EXTENSIONS)]
        for file in sorted(files):
            rel = os.path.relpath(file, args.root)
            for first, last, name in functions(file):
                found.append((last - first + 1, rel, first, last, name))
    found.sort(key=lambda x: (-x[0], x[1], x[2]))
    if args.top:
        print(f"the {args.top} longest functions:")
        for n, rel, first, last, name in found[:args.top]:
            print(f"  {n:4d}  {rel}:{first}-{last}  {name}")
    over = [f for f in found if f[0] > args.limit]
    for n, rel, first, last, name in over:
        print(f"{rel}:{first}: {name} is {n} lines (limit {args.limit})")
    if not over:
        print(f"no function over {args.limit} lines in {len(found)} functions")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
