"""Text -> AST: the parser of ``.conv`` files.

Precondition: none; any string is accepted.  Postcondition: either a
:class:`~convdsl.frontend.ast.Program` and no diagnostics, or ``None`` and at least one
``error`` diagnostic.  :func:`parse` never raises.

The work is done in four steps, each of which can report errors:

1. **lex** with lark's basic lexer; every unknown character is reported;
2. **brackets**: ``( ) [ ] { }`` must balance; an unclosed one is reported
   where it opens, a stray closing one where it stands;
3. **newlines** are normalised (see the grammar file's header), so that the
   LALR grammar only sees a ``_NL`` where it ends a layer;
4. **parse** by feeding the tokens to lark's interactive LALR parser.  After a
   syntax error the parser is reset to the last statement start (a layer
   line, or the next ``model``/``block``) and resumes after the offending
   line, so independent errors are all reported, but never a cascade.

The parse tree is then turned into ``convdsl.frontend.ast`` nodes by :class:`_Builder`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterator

from lark import Lark, Token, Tree
from lark.exceptions import LarkError, UnexpectedToken

from ..core.diagnostics import Diagnostic, Note, Span, error
from . import ast
from .limits import MAX_TOKENS

__all__ = ["parse", "get_parser", "MAX_NESTING", "MAX_ERRORS", "MAX_EXPR_DEPTH"]

MAX_NESTING = 64  # brackets deeper than this are refused (keeps recursion bounded)
MAX_DIGITS = 30  # longer integer literals are refused
MAX_EXPR_DEPTH = 200  # deeper expressions are refused (the checker evaluates them recursively)
MAX_ERRORS = 20  # stop reporting after this many syntax errors in one file

_LARK: Lark | None = None


def get_parser() -> Lark:
    """The grammar, loaded once per process from ``convdsl/frontend/grammar/convdsl.lark``."""
    global _LARK
    if _LARK is None:
        # Built each process (about 40 ms), never loaded from lark's table cache: that cache is a
        # pickle, and anyone who can write the cache directory could run code through it.
        _LARK = _open_grammar(parser="lalr", lexer="basic", propagate_positions=True, maybe_placeholders=False)
    return _LARK


def _open_grammar(**options) -> Lark:
    # package data of convdsl.frontend, so an installed package and a source checkout alike find it
    return Lark.open_from_package("convdsl.frontend", "grammar/convdsl.lark", **options)


def parse(text: str, file: str = "<input>") -> tuple[ast.Program | None, list[Diagnostic]]:
    """Parse one ``.conv`` file; returns ``(program, [])`` or ``(None, errors)``."""
    try:
        return _parse(text, file)
    except RecursionError:
        span = Span(file, 1, 1, 1, 2)
        return None, [error("syntax", "the program is nested too deeply to parse", span)]
    except Exception as exc:  # noqa: BLE001 -- last resort: parse() must never raise
        span = Span(file, 1, 1, 1, 2)
        return None, [error("internal", f"internal error in the parser: {type(exc).__name__}: {exc}", span)]


def _parse(text: str, file: str) -> tuple[ast.Program | None, list[Diagnostic]]:
    if not isinstance(text, str):
        raise TypeError("parse() expects the program text as a str")
    lark = get_parser()
    src = _Source(text, file)
    tokens, diags = _lex(src)
    diags += _check_brackets(tokens, src)
    if diags:
        return None, diags
    tokens = _normalise_newlines(tokens)
    trees, diags = _parse_tokens(lark, tokens, src)
    if diags:
        return None, diags
    builder = _Builder(file)
    items: list[ast.Item] = []
    for tree in trees:
        try:
            items.append(builder.item(tree))
        except _DeepExpression as e:
            diags.append(error("syntax", f"an expression nested more than {MAX_EXPR_DEPTH} deep (operators inside "
                               "operators)", e.span))
        except RecursionError:
            diags.append(error("syntax", "an expression in this item is nested too deeply", builder.head(tree)))
    if diags:
        return None, diags
    return ast.Program(file, tuple(items)), []


# ------------------------------------------------------------------ source
class _Source:
    def __init__(self, text: str, file: str):
        self.text = text
        self.file = file
        # Position just after the last character: where "end of file" points (counted, so that a
        # long file is not copied line by line for it; a CRLF is one break).
        breaks = text.count("\n") + text.count("\r") - text.count("\r\n")
        last = len(text) - max(text.rfind("\n"), text.rfind("\r")) - 1
        self.eof = Span(file, breaks + 1, last + 1, breaks + 1, last + 2)

    def tok(self, t: Token) -> Span:
        return _token_span(self.file, t)

    def after(self, t: Token | None) -> Span:
        """A one-character span just after token ``t`` (where something is missing)."""
        if t is None:
            return Span(self.file, 1, 1, 1, 2)
        end = _token_span(self.file, t)
        return Span(self.file, end.end_line, end.end_column, end.end_line, end.end_column + 1)


def _token_span(file: str, t: Token) -> Span:
    # Every token the scanner makes has its place; lark types them optional because a token it
    # makes up (the end of input) has none, and those are never located this way.
    assert t.line is not None and t.column is not None and t.end_line is not None and t.end_column is not None
    return Span(file, t.line, t.column, t.end_line, t.end_column)


def _at(span: Span) -> str:
    return f"{span.line}:{span.column}"


# -------------------------------------------------------------------- lex
def _describe_char(ch: str) -> str:
    if ch.isprintable() and not ch.isspace():
        return f"'{ch}'" if ord(ch) < 128 else f"'{ch}' (U+{ord(ch):04X})"
    return f"U+{ord(ch):04X}"


_CHAR_HINTS = {
    "/": "division is written '//' (floor division)",
    "<": "write comparisons with '>', '>=' or '=='",
    "!": "'!=' is not supported; write comparisons with '>', '>=' or '=='",
    ".": "sizes are integers and names are plain identifiers (a decimal such as 0.5 is a dropout probability)",
    '"': "there are no strings; names such as same or true are written bare",
    "'": "there are no strings; names such as same or true are written bare",
    ";": "layers are separated by newlines",
}


# One pattern for every terminal of the grammar (``grammar/convdsl.lark``), in the order lark's
# basic lexer tries them: a decimal before an integer, two-character symbols before their first
# character, keywords as names that are then retyped.  A hand-made scanner, because lark's lexer
# costs several microseconds a token and a long file is mostly tokens; ``tests/test_parse.py``
# checks that both give the same tokens.  Unlike the grammar's ``_NL``, a lone CR ends a line too
# (files with old Mac line endings), as it does for ``str.splitlines`` and the diagnostic renderer.
_SCAN = re.compile(
    r"(?P<WS>[ \t\f]+)|(?P<_NL>\r\n|\r|\n)|(?P<COMMENT>\#[^\r\n]*)"
    r"|(?P<DECIMAL>[0-9]*\.[0-9]+|[0-9]+\.)|(?P<INT>[0-9]+)|(?P<NAME>[A-Za-z_][A-Za-z_0-9]*)"
    r"|(?P<ARROW>->)|(?P<GE>>=)|(?P<EQ>==)|(?P<DSLASH>//)|(?P<GT>>)|(?P<LPAR>\()|(?P<RPAR>\))"
    r"|(?P<LSQB>\[)|(?P<RSQB>\])|(?P<LBRACE>\{)|(?P<RBRACE>\})|(?P<COMMA>,)|(?P<COLON>:)|(?P<PERCENT>%)"
    r"|(?P<EQUAL>=)|(?P<MINUS>-)|(?P<PLUS>\+)|(?P<STAR>\*)|(?P<BAD>.)",
    re.DOTALL,
)
_KEYWORD_TYPES = {"model": "MODEL", "block": "BLOCK", "repeat": "REPEAT", "where": "WHERE"}


def _lex(src: _Source) -> tuple[list[Token], list[Diagnostic]]:
    diags: list[Diagnostic] = []
    tokens: list[Token] = []
    max_tokens, complaint = MAX_TOKENS.read()
    if complaint:
        diags.append(error("limit", complaint, Span(src.file, 1, 1, 1, 2)))
    file = src.file
    line, line_start = 1, 0
    for m in _SCAN.finditer(src.text):
        kind = m.lastgroup
        if kind == "WS" or kind == "COMMENT":
            continue
        pos = m.start()
        col = pos - line_start + 1
        value = m.group()
        if kind == "_NL":
            tokens.append(Token("_NL", value, pos, line, col, line + 1, 1, m.end()))
            line, line_start = line + 1, m.end()
            continue
        if kind == "BAD":
            notes = []
            if value in _CHAR_HINTS:
                notes.append(Note(_CHAR_HINTS[value]))
            elif value.isalpha() or value.isdigit():
                notes.append(Note("names use the ASCII letters, digits and '_'"))
            diags.append(error("syntax", f"unexpected character {_describe_char(value)}",
                               Span(file, line, col, line, col + 1), *notes))
            if len(diags) >= MAX_ERRORS:
                return [], diags
            continue
        if kind == "NAME":
            kind = _KEYWORD_TYPES.get(value, "NAME")
        elif kind == "INT" and len(value) > MAX_DIGITS:
            diags.append(error("syntax", f"number too large ({len(value)} digits)",
                               Span(file, line, col, line, col + len(value))))
        assert kind is not None
        tokens.append(Token(kind, value, pos, line, col, line, col + len(value), m.end()))
        if len(tokens) > max_tokens:
            diags.append(error("limit", MAX_TOKENS.exceeded(f"the file holds more than {max_tokens:,} tokens"),
                               Span(file, line, col, line, col + len(value)),
                               Note("tokens are the names, numbers and symbols of the program")))
            return [], diags
    return tokens, diags[:MAX_ERRORS]


# --------------------------------------------------------------- brackets
_OPEN = {"LPAR": "RPAR", "LSQB": "RSQB", "LBRACE": "RBRACE"}
_CLOSE = {v: k for k, v in _OPEN.items()}
_TEXT = {"LPAR": "(", "RPAR": ")", "LSQB": "[", "RSQB": "]", "LBRACE": "{", "RBRACE": "}"}


def _check_brackets(tokens: list[Token], src: _Source) -> list[Diagnostic]:
    diags: list[Diagnostic] = []
    stack: list[Token] = []
    for i, t in enumerate(tokens):
        if stack and _starts_item(tokens, i):
            # ``model`` or ``block`` at the start of a line inside a body: the body's '}' (or an
            # argument list's ')') is missing before it.  Said here, where it is noticed, with a note
            # at the bracket left open, as clang does; the brackets before it are then closed.
            o = stack[-1]
            closer = _TEXT[_OPEN[o.type]]
            diags.append(error("syntax", f"expected '{closer}' before '{t}'", src.tok(t),
                               Note(f"to match this '{o}'", src.tok(o))))
            stack.clear()
        if t.type in _OPEN:
            stack.append(t)
            if len(stack) > MAX_NESTING:
                return diags + [error("syntax", f"brackets nested more than {MAX_NESTING} deep", src.tok(t))]
        elif t.type in _CLOSE:
            want = _CLOSE[t.type]
            if stack and stack[-1].type == want:
                stack.pop()
                continue
            if not any(o.type == want for o in stack):
                if stack and stack[-1].type != "LBRACE":
                    # ``[N, 3)``: the wrong closing bracket for the innermost one.
                    o = stack.pop()
                    diags.append(
                        error(
                            "syntax",
                            f"'{o}' opened at {o.line}:{o.column} is closed by '{t}' at {t.line}:{t.column};"
                            f" expected '{_TEXT[_OPEN[o.type]]}'",
                            src.tok(o),
                            Note(f"expected '{_TEXT[_OPEN[o.type]]}' here", src.tok(t)),
                        )
                    )
                else:
                    diags.append(error("syntax", f"unmatched '{t}': no '{_TEXT[want]}' is open here", src.tok(t)))
                continue
            # Every bracket opened after the one that ``t`` closes is left open.
            while stack[-1].type != want:
                o = stack.pop()
                diags.append(
                    error(
                        "syntax",
                        f"'{o}' opened at {o.line}:{o.column} is never closed: '{t}' at {t.line}:{t.column} comes first",
                        src.tok(o),
                        Note(f"expected '{_TEXT[_OPEN[o.type]]}' before this '{t}'", src.tok(t)),
                    )
                )
            stack.pop()
    for o in reversed(stack):
        diags.append(
            error(
                "syntax",
                f"unexpected end of file: '{o}' opened at {o.line}:{o.column} is never closed",
                src.tok(o),
                Note("the file ends here", src.eof),
            )
        )
    return diags[:MAX_ERRORS]


def _starts_item(tokens: list[Token], i: int) -> bool:
    """Whether token ``i`` begins a model or block: the keyword first on its line, then a name."""
    t = tokens[i]
    return (t.type in ("MODEL", "BLOCK") and (i == 0 or tokens[i - 1].type == "_NL")
            and i + 1 < len(tokens) and tokens[i + 1].type == "NAME")


# --------------------------------------------------------------- newlines
def _normalise_newlines(tokens: list[Token]) -> list[Token]:
    out: list[Token] = []
    depth: list[str] = []  # open ( and [ and {
    pending: Token | None = None
    for t in tokens:
        if t.type == "_NL":
            if depth and depth[-1] != "LBRACE":
                continue  # inside ( ) or [ ]: a layer spans lines
            pending = pending or t
            continue
        prev = out[-1].type if out else None
        if pending is not None:
            if prev not in (None, "LBRACE", "RBRACE", "COMMA", "_NL") and t.type not in ("LBRACE", "WHERE"):
                out.append(pending)
            pending = None
        elif t.type == "RBRACE" and prev not in (None, "LBRACE", "RBRACE", "_NL"):
            # ``conv(6) }``: the closing brace ends the layer too.
            out.append(Token.new_borrow_pos("_NL", "", t))
        if t.type in _OPEN:
            depth.append(t.type)
        elif t.type in _CLOSE and depth:
            depth.pop()
        out.append(t)
    return out


# ------------------------------------------------------------------ parse
_DISPLAY = {
    "NAME": "a name",
    "INT": "a number",
    "DECIMAL": "a decimal number",
    "COMMA": "','",
    "COLON": "':'",
    "EQUAL": "'='",
    "ARROW": "'->'",
    "GE": "'>='",
    "GT": "'>'",
    "EQ": "'=='",
    "PERCENT": "'%'",
    "PLUS": "'+'",
    "MINUS": "'-'",
    "STAR": "'*'",
    "DSLASH": "'//'",
    "MODEL": "'model'",
    "BLOCK": "'block'",
    "REPEAT": "'repeat'",
    "WHERE": "'where'",
    "_NL": "end of line",
    "$END": "end of file",
    **{k: f"'{v}'" for k, v in _TEXT.items()},
}
_ORDER = list(_DISPLAY)
_OPERATORS = {"PLUS", "MINUS", "STAR", "DSLASH"}
_EXPR_START = {"INT", "NAME", "MINUS"}
_KEYWORDS = {"MODEL", "BLOCK", "REPEAT", "WHERE"}


def _found(t: Token | None) -> str:
    if t is None or t.type == "$END":
        return "end of file"
    if t.type == "_NL":
        return "'}'" if t.value == "" else "end of line"
    if t.type in _KEYWORDS:
        return f"keyword '{t}'"
    return f"'{t}'"


def _join(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


@dataclass
class _Context:
    """What the innermost open bracket around a token belongs to."""

    kind: str  # "top", "body", "model-params", "block-params", "args", "tuple", "paren", "shape"
    prev: Token | None  # the token before


def _contexts(tokens: list[Token]) -> list[_Context]:
    """For each token, the bracket it sits in (used only to word error messages)."""
    result = []
    stack: list[str] = []
    prev = prev2 = None
    for t in tokens:
        result.append(_Context(stack[-1] if stack else "top", prev))
        if t.type == "LPAR":
            if prev is not None and prev.type == "NAME" and prev2 is not None and prev2.type == "MODEL":
                stack.append("model-params")
            elif prev is not None and prev.type == "NAME" and prev2 is not None and prev2.type == "BLOCK":
                stack.append("block-params")
            elif prev is not None and prev.type == "NAME":
                stack.append("args")
            elif stack and stack[-1] == "args" and prev is not None and prev.type in ("LPAR", "COMMA", "EQUAL"):
                stack.append("tuple")
            else:
                stack.append("paren")
        elif t.type == "LSQB":
            stack.append("shape")
        elif t.type == "LBRACE":
            stack.append("body")
        elif t.type in _CLOSE and stack:
            stack.pop()
        prev2, prev = prev, t
    return result


def _expected_message(expected: set[str], ctx: _Context) -> str:
    exp = set(expected)
    if exp - _OPERATORS and not _EXPR_START <= exp:
        exp -= _OPERATORS  # "expected ')' or ','" rather than a list of operators
    kind = ctx.kind
    if _EXPR_START <= exp:
        if kind == "shape":
            return "expected a dimension (an integer expression)"
        if kind == "args" and ctx.prev is not None and ctx.prev.type == "EQUAL":
            return "expected a value after '='"
        if kind == "args":
            return "expected an argument"
        if ctx.prev is not None and ctx.prev.type == "REPEAT":
            return "expected a repeat count after 'repeat'"
        return "expected an expression"
    prev = ctx.prev.type if ctx.prev is not None else None
    if exp == {"NAME"} and prev in ("MODEL", "BLOCK"):
        return f"expected the {ctx.prev}'s name after '{ctx.prev}'"
    if exp == {"NAME"} and prev == "COLON" and kind == "body":
        return "expected an op after the label"
    if exp == {"LSQB"}:
        return "expected a shape '[...]'"
    if {"NAME", "REPEAT", "RBRACE"} <= exp:
        return "expected a layer, 'repeat' or '}'"
    if {"MODEL", "BLOCK"} <= exp:
        return "expected 'model' or 'block'"
    closer = "RSQB" if "RSQB" in exp else "RPAR"
    if closer in exp and "COMMA" in exp:
        what = {
            "args": "after argument",
            "shape": "after dimension",
            "model-params": "after the input shape",
            "block-params": "after parameter",
            "tuple": "after tuple item",
        }.get(kind, "")
        return f"expected '{_TEXT[closer]}' or ',' {what}".rstrip()
    if "_NL" in exp and kind == "body" and exp <= {"_NL", "ARROW", "LPAR", "COLON"}:
        return "expected end of line after the layer (one layer per line)"
    return "expected " + _join([_DISPLAY.get(e, e) for e in sorted(exp, key=_order_key)])


def _order_key(term: str) -> int:
    return _ORDER.index(term) if term in _ORDER else len(_ORDER)


def _parse_tokens(lark: Lark, tokens: list[Token], src: _Source) -> tuple[list[Tree], list[Diagnostic]]:
    """Feed the tokens to the LALR parser, recovering at statement starts after an error."""
    contexts: list[_Context] | None = None  # made on the first error only: most files have none
    depths = []  # brace depth before each token
    d = 0
    for t in tokens:
        depths.append(d)
        d += t.type == "LBRACE"
        d -= t.type == "RBRACE"

    diags: list[Diagnostic] = []
    ip = lark.parse_interactive()
    snapshot, snap_depth = ip.copy(deepcopy_values=False), 0
    last_error = -1
    i = 0
    n = len(tokens)
    while i < n:
        t = tokens[i]
        try:
            ip.feed_token(t)
        except UnexpectedToken:
            if len(diags) >= MAX_ERRORS:
                return [], diags
            if contexts is None:
                contexts = _contexts(tokens)
            diags.append(_syntax_error(ip, t, tokens[i - 1] if i else None, contexts[i], src))
            if i == last_error:  # no progress: drop the token
                i += 1
            last_error = i
            i = _skip(tokens, depths, i, snap_depth)
            ip = snapshot.copy(deepcopy_values=False)
            continue
        i += 1
        depth_after = depths[i] if i < n else d
        if t.type in ("_NL", "LBRACE", "RBRACE") and (depth_after >= 1 or t.type == "RBRACE"):
            snapshot, snap_depth = ip.copy(deepcopy_values=False), depth_after
    try:
        last = tokens[-1] if tokens else None
        tree = ip.feed_eof(last)
    except UnexpectedToken:
        eof = Token("$END", "")
        last = tokens[-1] if tokens else None
        diags.append(_syntax_error(ip, eof, last, _Context("top", last), src))
        return [], diags
    if diags:
        return [], diags
    return [c for c in tree.children if isinstance(c, Tree)], []


def _skip(tokens: list[Token], depths: list[int], i: int, depth: int) -> int:
    """Index of the next statement start at brace depth ``depth``, from the bad token ``i``."""
    n = len(tokens)
    while i < n:
        t, d = tokens[i], depths[i]
        if depth == 0:
            if t.type in ("MODEL", "BLOCK") and d == 0:
                return i
            if t.type == "RBRACE" and d == 1:
                return i + 1
        else:
            if t.type == "RBRACE" and d == depth:
                return i  # closes the enclosing body: valid at a statement start
            if t.type == "RBRACE" and d == depth + 1:
                return i + 1  # end of a nested body (a broken ``repeat``)
            if t.type == "_NL" and d == depth:
                return i + 1
        i += 1
    return i


def _syntax_error(ip, tok: Token, prev: Token | None, ctx: _Context, src: _Source) -> Diagnostic:
    try:
        expected = ip.accepts()
    except LarkError:
        expected = set()
    message = _expected_message(expected, ctx) if expected else "unexpected input"
    message += f", found {_found(tok)}"
    if tok.type in ("_NL", "$END"):
        span = src.after(prev) if prev is not None else src.eof
    else:
        span = src.tok(tok)
    notes = []
    if tok.type in _KEYWORDS and "NAME" in expected:
        notes.append(Note(f"'{tok}' is a keyword and cannot be used as a name"))
    return error("syntax", message, span, *notes)


# ---------------------------------------------------------- tree -> AST
class _Builder:
    """Turns lark's parse tree into ``convdsl.frontend.ast`` nodes."""

    def __init__(self, file: str):
        self.file = file

    def span(self, node: Tree | Token) -> Span:
        if isinstance(node, Token):
            return _token_span(self.file, node)
        m = node.meta
        return Span(self.file, m.line, m.column, m.end_line, m.end_column)

    def head(self, tree: Tree) -> Span:
        return self.span(tree.children[1])

    @staticmethod
    def _subtrees(tree: Tree) -> Iterator[Tree]:
        return (c for c in tree.children if isinstance(c, Tree))

    # items ------------------------------------------------------------
    def item(self, tree: Tree) -> ast.Item:
        if tree.data == "model":
            return self.model(tree)
        return self.block(tree)

    def model(self, tree: Tree) -> ast.Model:
        kw, name, param, in_shape, out_shape, *rest = tree.children
        where = rest[0] if len(rest) == 2 else None
        body = rest[-1]
        return ast.Model(
            name=str(name),
            name_span=self.span(name),
            input=self.param(param),
            input_shape=self.shape(in_shape),
            output_shape=self.shape(out_shape),
            where=tuple(self.constraint(c) for c in self._subtrees(where)) if where is not None else (),
            body=self.body(body),
            span=self.span(kw).to(self.span(out_shape)),
        )

    def block(self, tree: Tree) -> ast.Block:
        kw, name, *rest = tree.children
        params: tuple[ast.Param, ...] = ()
        signature = None
        end = self.span(name)
        for part in rest[:-1]:
            if part.data == "params":
                params = tuple(self.param(p) for p in self._subtrees(part))
            else:
                a, b = self._subtrees(part)
                signature = (self.shape(a), self.shape(b))
            end = self.span(part)
        return ast.Block(
            name=str(name),
            name_span=self.span(name),
            params=params,
            signature=signature,
            body=self.body(rest[-1]),
            span=self.span(kw).to(end),
        )

    def param(self, tree: Tree) -> ast.Param:
        (name,) = tree.children
        return ast.Param(str(name), self.span(name))

    def constraint(self, tree: Tree) -> ast.Constraint:
        if tree.data == "compare":
            lhs, op, rhs = tree.children
            return ast.Compare(str(op), self.expr(lhs), self.expr(rhs), self.span(tree))  # type: ignore[arg-type]
        value, modulus, _eq, remainder = tree.children
        return ast.Divisible(self.expr(value), self.expr(modulus), self.expr(remainder), self.span(tree))

    # statements -------------------------------------------------------
    def body(self, tree: Tree) -> tuple[ast.Stmt, ...]:
        return tuple(self.stmt(s) for s in self._subtrees(tree))

    def stmt(self, tree: Tree) -> ast.Stmt:
        if tree.data == "repeat":
            kw, count, body = tree.children
            return ast.Repeat(self.expr(count), self.body(body), self.span(kw).to(self.span(count)))
        label = label_span = args_span = declared = None
        args: tuple[ast.Arg, ...] = ()
        op = None
        for c in tree.children:
            if isinstance(c, Token):
                op = c
            elif c.data == "label":
                label, label_span = str(c.children[0]), self.span(c.children[0])
            elif c.data == "args":
                args = tuple(self.arg(a) for a in self._subtrees(c))
                args_span = self.span(c)
            else:  # declared
                declared = self.shape(c.children[0])
        assert op is not None
        return ast.Layer(label, label_span, str(op), self.span(op), args, args_span, declared, self.span(tree))

    def arg(self, tree: Tree) -> ast.Arg:
        if tree.data == "kwarg":
            key, value = tree.children
            return ast.Arg(str(key), self.value(value), self.span(tree), self.span(key))
        (value,) = tree.children
        return ast.Arg(None, self.value(value), self.span(tree))

    def value(self, node: Tree) -> ast.ArgValue:
        if node.data == "tuple":
            return ast.TupleArg(tuple(self.expr(e) for e in node.children), self.span(node))
        if node.data in ("decimal", "negdecimal"):
            sign = "-" if node.data == "negdecimal" else ""
            return ast.Decimal(sign + str(node.children[0]), self.span(node))
        return self.expr(node)

    def shape(self, tree: Tree) -> ast.Shape:
        return ast.Shape(tuple(self.expr(e) for e in self._subtrees(tree)), self.span(tree))

    # expressions ------------------------------------------------------
    _BINOPS = {"add": "+", "sub": "-", "mul": "*", "floordiv": "//"}

    def expr(self, node: Tree, depth: int = 0) -> ast.Expr:
        kind = node.data
        if kind == "num":
            return ast.Num(int(str(node.children[0])), self.span(node))
        if kind == "name":
            return ast.Name(str(node.children[0]), self.span(node))
        if depth >= MAX_EXPR_DEPTH:
            raise _DeepExpression(self.span(node))
        if kind == "neg":
            return ast.Neg(self.expr(node.children[0], depth + 1), self.span(node))
        left, right = node.children
        return ast.BinOp(self._BINOPS[kind], self.expr(left, depth + 1), self.expr(right, depth + 1),  # type: ignore[arg-type]
                         self.span(node))


class _DeepExpression(Exception):
    def __init__(self, span: Span):
        self.span = span
