"""Makes streamed model text fit to be spoken and shown in a voice UI.

Models love markdown (and small ones, HTML); a voice does not. `SpeechShaper` turns a streamed
reply into plain text as it streams, so nothing waits for the whole reply:

- emoji (ZWJ sequences, skin tones, flags and keycaps included) are removed with the `emoji`
  package's data, before anything else;
- each line is classified by its start (heading, bullet, block quote, table row, code fence,
  thematic break): markers are dropped, ordered-list numbers are kept (they are content), fence
  lines vanish and the code between them is kept verbatim;
- the rest of a line is rendered by `markdown-it-py`'s inline parser (CommonMark plus
  strikethrough) into plain text: emphasis markers go, code spans, link texts and image alt
  texts stay, URLs and real HTML tags go, and "<3" or "a < b" stay text. Line breaks become spaces,
  except inside Chinese or Japanese text, which puts no spaces between words or after its
  sentences: a line wrapped inside a paragraph, or broken after a full-width "。！？，" or the like,
  joins the next without one ("今天\n很好。\n明天" -> "今天很好。明天"), as markdown-it's cjk-breaks
  rule does; between list items or after a heading the space stays, as the only separator there is.

Streaming works by cutting each line into segments that are rendered on their own. A segment
ends at the first position where nothing in it can still turn into markup: no half-open code
span, link, HTML tag, entity or escape, and no emphasis opener that markdown-it left unmatched
(markdown-it's own delimiter matching decides that, so the rule cannot drift from the
renderer). Whether a position is a cut depends only on the text before it plus one character
after it, and cuts are taken greedily from the line start, so the same text gives the same
segments, hence the same output, however it is split into deltas. Plain text leaves as soon as
its next character is known; an unclosed marker ("5 *3") holds the rest of its line at most,
and is released as literal text when the line ends. Text is never invented, and every word
outside markup survives.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from enum import Enum, auto

import emoji
from markdown_it import MarkdownIt
from markdown_it.rules_inline import StateInline
from markdown_it.token import Token

# HTML on, typographer off (it would rewrite quotes and dashes), plus GFM's ~~strikethrough~~.
_MD = MarkdownIt("commonmark").enable("strikethrough")

_DELIMITERS = frozenset("*_~")
# Characters that can make inline text render differently from itself; text without them is
# passed through without asking the parser.
_SPECIAL = frozenset("\\`*_~[]!<&")

# Emoji machinery: a character that may still be followed by more of its emoji sequence, and
# characters that only ever extend the one before them.
_KEYCAP_BASES = frozenset("0123456789#*")
_ZWJ = "\u200d"
_EXTENDERS = frozenset(
    [_ZWJ, "\ufe0e", "\ufe0f", "\u20e3"]
    + [chr(c) for c in range(0x1F3FB, 0x1F400)]  # skin tones
    + [chr(c) for c in range(0xE0020, 0xE0080)]  # tag characters (subdivision flags)
)

# Block structure, read from the start of each line.
_QUOTE = re.compile(r"[ \t]*>[ \t]?")
_HEADING = re.compile(r"#{1,6}(?:[ \t]+|$)")
_BULLET = re.compile(r"[-*+•](?:[ \t]+|$)")
_THEMATIC_BREAK = re.compile(r"([-*_])(?:[ \t]*\1){2,}[ \t]*")
_MAYBE_THEMATIC_BREAK = re.compile(r"([-*_])(?:[ \t]*\1)*[ \t]*")
_SETEXT_UNDERLINE = re.compile(r"=+[ \t]*")
_CLOSING_HASHES = re.compile(r"(?:^|[ \t])#+[ \t]*$")
_TABLE_DELIMITER_CELL = re.compile(r"\s*:?-+:?\s*")
# An entity ("&amp;", "&#39;") may still be growing while the text ends in one of these.
_ENTITY_TAIL = re.compile(r"&[#A-Za-z0-9]*$")
_ENTITY_CHAR = re.compile(r"[#A-Za-z0-9;]")
# Tags that separate words when a browser renders them; others vanish without a trace.
_BREAKING_TAG = re.compile(r"</?(?:br|p|div|li|ul|ol|tr|td|th|h[1-6]|hr|table|blockquote|pre)\b", re.IGNORECASE)
# Han ideographs, kana and the CJK punctuation and full-width forms: scripts written without spaces
# (Korean, written with spaces, is not one of them).
_UNSPACED = re.compile(r"[\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef]")
# What a breaking tag leaves: a space before a word, nothing before punctuation ("</p>,").
_SOFT_SPACE = "\x00"
_WHITESPACE = re.compile(r"(\s+|\x00)")


class _Kind(Enum):
    TEXT = auto()  # paragraph, list item or block quote content: inline markdown
    HEADING = auto()  # like TEXT, but a closing run of '#' is dropped
    TABLE = auto()  # cells between '|', each rendered like TEXT
    CODE = auto()  # a line inside a fenced code block: verbatim
    FENCE = auto()  # a fence line: dropped, and opens or closes a code block
    DROP = auto()  # blank lines, thematic breaks, setext underlines


@dataclass(frozen=True, slots=True)
class _Block:
    kind: _Kind
    start: int  # where the content starts in the line
    fence: str = ""  # FENCE only: the fence's run of backticks or tildes


class SpeechShaper:
    """Turns streamed markdown into plain text, delta by delta (see the module docstring)."""

    def __init__(self) -> None:
        self._emoji = _EmojiFilter()
        self._fence = ""  # the opening fence while inside a fenced code block
        self._out: list[str] = []
        self._started = False  # something was written: a pending space may now be written
        self._space = False  # a space is owed before the next word
        self._soft_space = False  # a space is owed before the next word if it starts with a letter
        self._break = False  # the owed space comes from a line break (or a breaking tag), not the text
        self._wrapped = False  # that line break continued a paragraph (a text line after a text line)
        self._last = ""  # the last character written
        self._line = ""  # the current line, from its start
        self._block: _Block | None = None  # what the current line is, once its start tells
        self._segment = 0  # where the segment not yet written starts in the line
        self._candidate = 0  # the next position to test as a cut; those before it were refused
        self._cells = 0  # table cells written on this line
        self._resume = 0  # where to go on scanning the segment for unfinished constructs
        self._open_until = -1  # the segment ending here had an unmatched emphasis opener

    def push(self, text: str) -> str:
        self._feed(self._emoji.push(text))
        return self._take()

    def flush(self) -> str:
        """Releases everything held back and resets the shaper for a new reply."""
        self._feed(self._emoji.flush())
        if self._line or self._block is not None:
            self._advance(complete=True)
        out = self._take()
        self._fence, self._started, self._space, self._soft_space = "", False, False, False
        self._break, self._wrapped, self._last = False, False, ""
        return out

    # -- lines ------------------------------------------------------------------------------

    def _new_line(self) -> None:
        self._line, self._block, self._segment, self._candidate, self._cells = "", None, 0, 0, 0
        self._resume, self._open_until = 0, -1

    def _feed(self, text: str) -> None:
        # A lone "\r" is no line break a model means; "\r\n" ends the line at the "\n". NUL is
        # the soft space's marker inside the shaper.
        text = text.replace("\r", " ").replace(_SOFT_SPACE, " ")
        while text:
            head, newline, text = text.partition("\n")
            self._line += head
            self._advance(complete=bool(newline))

    def _advance(self, complete: bool) -> None:
        if self._block is None:
            self._block = _classify(self._line, complete, self._fence)
            if self._block is None:
                return  # the line start could still become a marker
            self._segment = self._candidate = self._block.start
        kind = self._block.kind
        if kind is _Kind.CODE:
            self._write(self._line[self._segment :])
            self._segment = len(self._line)
        elif kind in (_Kind.TEXT, _Kind.HEADING, _Kind.TABLE):
            self._cut_segments(complete)
        if complete:
            self._end_line()

    def _end_line(self) -> None:
        assert self._block is not None
        if self._block.kind is _Kind.FENCE:
            self._fence = "" if self._fence else self._block.fence
        if not self._space:
            self._break = True
            # A plain text line: a next plain text line would be the same paragraph, wrapped.
            self._wrapped = self._block.kind is _Kind.TEXT and self._block.start == 0
        elif self._block.kind is _Kind.DROP:
            self._wrapped = False  # a blank line ends the paragraph
        self._space = True  # a line break reads as a space
        self._new_line()

    # -- segments ---------------------------------------------------------------------------

    def _cut_segments(self, complete: bool) -> None:
        line = self._line
        # A cut at p needs line[p] known; the line's end is always a cut once the line is complete.
        last = len(line) - 1
        for p in range(max(self._candidate, self._segment + 1), last + 1):
            if self._is_cut(p):
                self._render(self._segment, p)
                self._segment, self._resume, self._open_until = p, 0, -1
        self._candidate = max(self._candidate, last + 1)
        if complete and self._segment < len(line):
            end = len(line)
            if self._block is not None and self._block.kind is _Kind.HEADING:
                closing = _CLOSING_HASHES.search(line[self._block.start :])
                if closing is not None:
                    end = max(self._block.start + closing.start(), self._segment)
            self._render(self._segment, end)
            self._segment = len(line)

    def _is_cut(self, p: int) -> bool:
        assert self._block is not None
        line, start = self._line, self._segment
        if self._block.kind is _Kind.TABLE:
            # GFM splits cells at every '|' that is not escaped, before any inline parsing.
            return line[p - 1] == "|" and _escaped_backslashes(line, p - 1) % 2 == 0
        before, after = line[p - 1], line[p]
        if before in _DELIMITERS or after in _DELIMITERS:
            return False  # a delimiter run's meaning depends on both its neighbours
        if self._block.kind is _Kind.HEADING and _CLOSING_HASHES.search(line[self._block.start : p]):
            return False  # maybe the heading's closing '#'s: known at the line's end
        segment = line[start:p]
        if _SPECIAL.isdisjoint(segment):
            return True
        # The two checks below are cached per segment: a segment only grows, what was finished
        # stays finished, and an unmatched emphasis opener stays unmatched until a delimiter
        # (a possible closer) arrives. This keeps a long line with an early '[' or '*' linear.
        unfinished, self._resume = _scan(segment, after, self._resume)
        if unfinished:
            return False
        if _DELIMITERS.isdisjoint(segment):
            return True
        if self._open_until >= 0 and _DELIMITERS.isdisjoint(line[self._open_until : p]):
            return False
        if _inline_tokens(segment)[1]:
            self._open_until = p
            return False
        return True

    def _render(self, start: int, end: int) -> None:
        assert self._block is not None
        source = self._line[start:end]
        if self._block.kind is _Kind.TABLE:
            closed = source.endswith("|") and _escaped_backslashes(source, len(source) - 1) % 2 == 0
            cell = source[:-1] if closed else source
            if _TABLE_DELIMITER_CELL.fullmatch(cell):
                return  # the |---|:---:| row under a table's header
            text = _plain(cell)
            if text.strip():
                if self._cells:
                    self._space = False
                    self._write(",")
                    self._space = True
                self._write(text)
                self._cells += 1
            return
        self._write(_plain(source))

    # -- output -----------------------------------------------------------------------------

    def _write(self, text: str) -> None:
        """Appends text with every run of whitespace as one space, owed until a word follows."""
        for part in _WHITESPACE.split(text):
            if not part:
                continue
            if part == _SOFT_SPACE:
                if not (self._space or self._soft_space):
                    self._break = True  # separate blocks: joined only after a full-width mark
                self._soft_space = True
                continue
            if part.isspace():
                self._space = True
                self._break = False  # the text's own space: it stays
                continue
            if self._started and (self._space or (self._soft_space and part[0].isalnum())) and not self._joins(part):
                self._out.append(" ")
            self._out.append(part)
            self._space = self._soft_space = self._break = self._wrapped = False
            self._started = True
            self._last = part[-1]

    def _joins(self, part: str) -> bool:
        """Whether a space owed to a line break is left out: inside CJK text, a wrapped line or one
        broken after a full-width mark."""
        if not (self._break and _UNSPACED.match(self._last) and _UNSPACED.match(part[0])):
            return False
        wrapped = self._wrapped and self._block is not None and self._block.kind is _Kind.TEXT
        return wrapped or unicodedata.category(self._last).startswith("P")

    def _take(self) -> str:
        out = "".join(self._out)
        self._out.clear()
        return out


def _classify(line: str, complete: bool, fence: str) -> _Block | None:
    """What a line is, from its start; None while its start could still become something else."""
    if fence:
        rest = line.lstrip(" \t")
        run = len(rest) - len(rest.lstrip(fence[0]))
        closes = run >= len(fence) and not rest[run:].strip(" \t")
        if complete:
            return _Block(_Kind.FENCE, len(line)) if closes else _Block(_Kind.CODE, 0)
        if run == len(rest.rstrip(" \t")):
            return None  # only fence characters and blanks so far: maybe the closing fence
        return _Block(_Kind.CODE, 0)
    start = 0
    while quote := _QUOTE.match(line, start):
        start = quote.end()
    while start < len(line) and line[start] in " \t":
        start += 1
    rest = line[start:]
    if not rest:
        return _Block(_Kind.DROP, start) if complete else None
    if not complete and len(rest) == 1:
        return None  # "-", "+", "#", "`", "=" ... need one more character
    first = rest[0]
    if first in "`~":
        run = len(rest) - len(rest.lstrip(first))
        if run >= 3:
            if not complete:
                return None  # the info string ends at the line's end
            if first == "~" or "`" not in rest[run:]:
                return _Block(_Kind.FENCE, len(line), rest[:run])
        elif not complete and run == len(rest):
            return None
        return _Block(_Kind.TEXT, start)
    if first == "#":
        if not complete and rest.count("#") == len(rest) <= 6:
            return None
        heading = _HEADING.match(rest)
        return _Block(_Kind.HEADING, start + heading.end()) if heading else _Block(_Kind.TEXT, start)
    if first in "-*_+•":
        if complete and _THEMATIC_BREAK.fullmatch(rest):
            return _Block(_Kind.DROP, len(line))
        if not complete and _MAYBE_THEMATIC_BREAK.fullmatch(rest):
            return None
        bullet = _BULLET.match(rest)
        return _Block(_Kind.TEXT, start + bullet.end()) if bullet else _Block(_Kind.TEXT, start)
    if first == "=" and _SETEXT_UNDERLINE.fullmatch(rest):
        return _Block(_Kind.DROP, len(line)) if complete else None
    if first == "|":
        return _Block(_Kind.TABLE, start + 1)
    return _Block(_Kind.TEXT, start)


def _escaped_backslashes(text: str, end: int) -> int:
    """How many backslashes come right before text[end]."""
    count = 0
    while end - count > 0 and text[end - count - 1] == "\\":
        count += 1
    return count


def _scan(text: str, after: str, i: int = 0) -> tuple[bool, int]:
    """Whether text ends inside a construct that the next characters could still complete.

    `after` is the character that follows text. Returns that verdict and where a later scan of
    the same text, grown, may start: the start of the unfinished construct, or the end. Errs
    towards unfinished, which only holds text back until its line ends.
    """
    n = len(text)
    while i < n:
        char = text[i]
        if char == "\\":
            if i + 1 >= n:
                return True, i  # escapes `after`
            i += 2
            continue
        if char == "`":
            end = _skip_code_span(text, i, after)
            if end < 0:
                return True, i
            i = end
            continue
        following = text[i + 1] if i + 1 < n else after
        if char == "<" and following.isascii() and (following.isalpha() or following in "/!?"):
            close = text.find(">", i + 1)
            if close < 0:
                return True, i  # maybe a tag, an autolink or a comment
            i = close + 1
            continue
        if char == "!" and following == "[" and i + 1 >= n:
            return True, i  # maybe an image
        if char == "[":
            end = _skip_link(text, i, after)
            if end < 0:
                return True, i
            i = end
            continue
        if char == "&" and _ENTITY_TAIL.match(text, i) and _ENTITY_CHAR.match(after):
            return True, i
        i += 1
    return False, n


def _skip_code_span(text: str, start: int, after: str) -> int:
    """The end of the code span opening at text[start], or -1 while it is open."""
    n = len(text)
    end = start
    while end < n and text[end] == "`":
        end += 1
    length = end - start
    while (found := text.find("`", end)) >= 0:
        end = found
        while end < n and text[end] == "`":
            end += 1
        if end - found == length:
            return -1 if end == n and after == "`" else end
    return -1


def _skip_link(text: str, start: int, after: str) -> int:
    """The end of the bracket group at text[start] with its "(url)" or "[ref]", or -1 while open."""
    if text.find("]", start) < 0:
        return -1  # the common case of an open bracket, found without walking the text in Python
    n, depth, i = len(text), 0, start
    while i < n:
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char == "`":
            i = _skip_code_span(text, i, after)  # code spans bind tighter than brackets
            if i < 0:
                return -1
            continue
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth == 0:
                break
        i += 1
    else:
        return -1
    i += 1
    following = text[i] if i < n else after
    if following not in "([":
        return i
    if i == n:
        return -1
    closer = ")" if following == "(" else "]"
    depth = 0
    while i < n:
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char == following:
            depth += 1
        elif char == closer:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return -1


def _inline_tokens(source: str) -> tuple[list[Token], bool]:
    """markdown-it's inline tokens for source, and whether an emphasis opener is left unmatched.

    An unmatched opener renders as a literal '*' now, but a later closer could still match it.
    """
    state = StateInline(source, _MD, {}, [])
    _MD.inline.tokenize(state)
    for rule in _MD.inline.ruler2.getRules(""):
        rule(state)
    return state.tokens, any(d.open and d.end < 0 for d in state.delimiters)


def _plain(source: str) -> str:
    """The plain text of one line's inline markdown."""
    if _SPECIAL.isdisjoint(source):
        return source
    return _text_of(_inline_tokens(source)[0])


def _text_of(tokens: list[Token]) -> str:
    parts: list[str] = []
    for token in tokens:
        if token.type in ("text", "text_special", "code_inline"):
            parts.append(token.content)
        elif token.type in ("softbreak", "hardbreak"):
            parts.append(" ")
        elif token.type == "image":
            parts.append(_text_of(token.children or []))
        elif token.type == "html_inline" and _BREAKING_TAG.match(token.content):
            parts.append(_SOFT_SPACE)
        # Link, emphasis and other tags, and any other HTML, leave no text.
    return "".join(parts)


class _EmojiFilter:
    """Removes emoji from a stream, holding back only a tail that could still grow into one."""

    def __init__(self) -> None:
        self._held = ""

    def push(self, text: str) -> str:
        text = self._held + text
        cut = len(text)
        while cut > 0 and not _emoji_cut(text, cut):
            cut -= 1
        self._held = text[cut:]
        return _strip_emoji(text[:cut])

    def flush(self) -> str:
        text, self._held = self._held, ""
        return _strip_emoji(text)


def _emoji_cut(text: str, cut: int) -> bool:
    """Whether no emoji sequence can span text[cut - 1] and the character at cut (known or not)."""
    before = text[cut - 1]
    if cut == len(text):
        return not (before in _KEYCAP_BASES or before in _EXTENDERS or _is_regional(before) or emoji.is_emoji(before))
    after = text[cut]
    return not (after in _EXTENDERS or before == _ZWJ or (_is_regional(before) and _is_regional(after)))


def _is_regional(char: str) -> bool:
    return "\U0001f1e6" <= char <= "\U0001f1ff"  # the letters that pair into flags


def _strip_emoji(text: str) -> str:
    return text if text.isascii() else emoji.replace_emoji(text, "")
