"""Errors a person reads: one line per bad input, help texts that point at files that exist, and the README's flag
list checked against the parsers."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import main_attack
import main_defense
import main_localization

REPO = Path(__file__).resolve().parents[1]
MAINS = (main_attack, main_defense, main_localization)


def parsers():
    """Each entry point's argparse parser, built without parsing."""
    captured = []
    for module in MAINS:
        original = module.ArgParser.parse

        def grab(self, argv=None, _original=original):
            captured.append(self.parser)
            raise SystemExit(0)

        module.ArgParser.parse = grab
        try:
            with pytest.raises(SystemExit):
                module.parse_args([])
        finally:
            module.ArgParser.parse = original
    return captured


def readme_flags_section() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index("\n## Flags\n")
    return text[start: text.index("\n## ", start + 5)]


def test_every_flag_of_the_entry_points_is_in_the_readme_flag_list_and_no_other():
    section = readme_flags_section()
    listed = set(re.findall(r"--[A-Za-z_][A-Za-z0-9_]*", section))
    options = {opt for parser in parsers() for opt in parser._option_string_actions if opt.startswith("--")}
    listed.discard("--help")
    options.discard("--help")
    assert not options - listed, f"flags missing from the README's Flags section: {sorted(options - listed)}"
    assert not listed - options, f"README's Flags section names flags no parser has: {sorted(listed - options)}"


def test_the_readme_flag_list_gives_each_choice_list_in_full():
    section = readme_flags_section()
    actions = {opt: action for parser in parsers() for opt, action in parser._option_string_actions.items()}
    shown = re.findall(r"`(--[A-Za-z_]+)[^`]*?\{([^}`]+)\}", section)
    assert shown, "no `--flag {a,b}` choice lists found"
    for flag, choices in shown:
        written = {c.strip() for c in choices.replace("\\|", ",").split(",")}
        assert written == {str(c) for c in actions[flag].choices}, flag


def test_help_texts_name_files_that_exist():
    texts = [parser.format_help() for parser in parsers()] + [module.__doc__ for module in MAINS]
    texts += [path.read_text() for path in (REPO / "scripts").glob("*.py")]
    referenced = {m for text in texts for m in re.findall(r"\b((?:scripts|bench|evaluation|dataset|training|models|"
                                                         r"attacks)/[A-Za-z0-9_]+\.(?:py|sh))", text)}
    assert referenced
    assert all((REPO / path).is_file() for path in referenced), sorted(p for p in referenced
                                                                        if not (REPO / p).is_file())


def test_preprocess_out_at_an_existing_file_is_one_line(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    out = tmp_path / "out.txt"
    out.write_text("not a folder")
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "preprocess.py"), "--videos", str(videos),
                           "--out", str(out)], capture_output=True, text=True)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 2 and f"--out {out} is a file" in lines[0]
