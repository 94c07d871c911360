#!/usr/bin/env python3
"""Offline structure check of a Jenkins declarative pipeline (ci/templates/Jenkinsfile).

Jenkins's own linter (`declarative-linter`, or POST /pipeline-model-converter/validate) needs a
running Jenkins controller, so ci/check-templates.sh runs it only when JENKINS_URL is set. This
script checks, without Jenkins:

  1. the Groovy text is well formed as far as a declarative pipeline needs: strings ('...',
     "...", '''...''', \"\"\"...\"\"\") and comments closed, braces, brackets and parentheses
     balanced and nested correctly (errors give the line);
  2. the declarative structure: one top-level `pipeline { }` with only the sections and
     directives a pipeline may have, `agent` at the top or (with `agent none`) in every stage,
     `stages` with at least one `stage('name')`, each stage with exactly one of `steps`,
     `stages`, `parallel` or `matrix`, only the directives a stage may have, unique stage names;
  3. with --stages A,B,...: those stages exist; with --commands FILE: every command (one a line)
     is run by an `sh` step.

    check_jenkinsfile.py ci/templates/Jenkinsfile --stages check,test,image --commands cmds.txt

Exit 0 when everything holds, 1 with one line per problem otherwise.
"""

import argparse
import re
import sys

PIPELINE_SECTIONS = {"agent", "environment", "options", "parameters", "triggers", "tools",
                     "stages", "post", "libraries"}
STAGE_SECTIONS = {"agent", "environment", "options", "when", "steps", "stages", "parallel",
                  "matrix", "post", "tools", "input", "failFast"}
STAGE_BODIES = {"steps", "stages", "parallel", "matrix"}
OPEN = {"{": "}", "(": ")", "[": "]"}


class Token:
    def __init__(self, kind, text, line):
        self.kind, self.text, self.line = kind, text, line

    def __repr__(self):
        return f"{self.kind}:{self.text!r}@{self.line}"


def tokenize(text):
    """Tokens (word, string, punct, newline) of Groovy text; raises ValueError(line, message)."""
    tokens, i, line, n = [], 0, 1, len(text)
    while i < n:
        c = text[i]
        if c == "\n":
            tokens.append(Token("newline", "\n", line))
            line += 1
            i += 1
        elif c in " \t\r":
            i += 1
        elif text.startswith("//", i):
            while i < n and text[i] != "\n":
                i += 1
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            if end < 0:
                raise ValueError(line, "a /* comment is not closed")
            line += text.count("\n", i, end)
            i = end + 2
        elif text.startswith("'''", i) or text.startswith('"""', i):
            quote = text[i:i + 3]
            j = i + 3
            while True:
                end = text.find(quote, j)
                if end < 0:
                    raise ValueError(line, f"a {quote} string is not closed")
                if text[end - 1] != "\\":
                    break
                j = end + 1
            tokens.append(Token("string", text[i + 3:end], line))
            line += text.count("\n", i, end)
            i = end + 3
        elif c in "'\"":
            j = i + 1
            while j < n and text[j] != c:
                if text[j] == "\n":
                    raise ValueError(line, f"a {c} string is not closed on its line")
                j += 2 if text[j] == "\\" else 1
            if j >= n:
                raise ValueError(line, f"a {c} string is not closed")
            tokens.append(Token("string", text[i + 1:j], line))
            i = j + 1
        elif c.isalpha() or c == "_":
            m = re.match(r"[A-Za-z_][A-Za-z0-9_]*", text[i:])
            tokens.append(Token("word", m.group(0), line))
            i += len(m.group(0))
        else:
            tokens.append(Token("punct", c, line))
            i += 1
    return tokens


class Block:
    """`name(args) { children }`: a section, directive or closure of the pipeline."""

    def __init__(self, name, header, line):
        self.name, self.header, self.line = name, header, line
        self.children = []  # Blocks
        self.statements = []  # lists of tokens outside nested blocks, one per line

    def find(self, name):
        return [b for b in self.children if b.name == name]


def parse(tokens):
    """The block tree of the tokens; raises ValueError(line, message) on unbalanced brackets."""
    root = Block("<file>", [], 1)
    stack = [root]
    brackets = []  # open ( [ { with their line
    current = []  # tokens of the statement being read
    for tok in tokens:
        if tok.kind == "punct" and tok.text in OPEN:
            brackets.append(tok)
            if tok.text == "{":
                words = [t for t in current if t.kind == "word"]
                # The block's name: the first word of its header (`stage('x') {`, `steps {`),
                # `<closure>` for `{` after an operator or call argument list ending in `(`.
                name = words[0].text if words else "<closure>"
                block = Block(name, current, tok.line)
                stack[-1].children.append(block)
                stack.append(block)
                current = []
                continue
        elif tok.kind == "punct" and tok.text in OPEN.values():
            if not brackets:
                raise ValueError(tok.line, f"'{tok.text}' closes nothing")
            opened = brackets.pop()
            if OPEN[opened.text] != tok.text:
                raise ValueError(tok.line, f"'{tok.text}' closes '{opened.text}' of line {opened.line}")
            if tok.text == "}":
                if current:
                    stack[-1].statements.append(current)
                current = []
                stack.pop()
                continue
        if tok.kind == "newline":
            # A statement goes on over a newline inside ( or [ (a call's arguments).
            if brackets and brackets[-1].text in "([":
                continue
            if current:
                stack[-1].statements.append(current)
            current = []
            continue
        current.append(tok)
    if brackets:
        raise ValueError(brackets[-1].line, f"'{brackets[-1].text}' is not closed")
    if current:
        root.statements.append(current)
    return root


def sh_commands(block):
    """The string arguments of every `sh` step under a block."""
    found = []
    for stmt in block.statements:
        for i, tok in enumerate(stmt):
            if tok.kind == "word" and tok.text == "sh":
                rest = [t for t in stmt[i + 1:] if not (t.kind == "punct" and t.text in "()")]
                if rest and rest[0].kind == "string":
                    found.append(rest[0].text)
    for child in block.children:
        found += sh_commands(child)
    return found


def stage_name(block):
    strings = [t for t in block.header if t.kind == "string"]
    return strings[0].text if strings else None


def check_stages(stages_block, problems, names, top_agent_none):
    stages = stages_block.find("stage")
    if not stages:
        problems.append(f"line {stages_block.line}: `stages` has no `stage('name')`")
    others = [b.name for b in stages_block.children if b.name != "stage"]
    if others:
        problems.append(f"line {stages_block.line}: `stages` holds {others}: only stage blocks")
    for stage in stages:
        name = stage_name(stage)
        if name is None:
            problems.append(f"line {stage.line}: a stage without a name (stage('name') {{ }})")
            continue
        if name in names:
            problems.append(f"line {stage.line}: stage '{name}' is defined twice")
        names.append(name)
        unknown = [b.name for b in stage.children if b.name not in STAGE_SECTIONS]
        if unknown:
            problems.append(f"line {stage.line}: stage '{name}' has unknown sections {unknown}")
        bodies = [b.name for b in stage.children if b.name in STAGE_BODIES]
        if len(bodies) != 1:
            problems.append(f"line {stage.line}: stage '{name}' needs exactly one of steps, "
                            f"stages, parallel, matrix (has {bodies or 'none'})")
        inner = stage.find("stages")
        has_agent = bool(stage.find("agent")) or any(
            s.kind == "word" and s.text == "agent" for st in stage.statements for s in st)
        if top_agent_none and not has_agent and not inner and not stage.find("parallel"):
            problems.append(f"line {stage.line}: stage '{name}' has no agent under `agent none`")
        for sub in inner:
            check_stages(sub, problems, names, top_agent_none and not has_agent)
        for steps in stage.find("steps"):
            if not steps.children and not steps.statements:
                problems.append(f"line {steps.line}: stage '{name}' has empty steps")


def check(text, want_stages, want_commands):
    problems = []
    try:
        root = parse(tokenize(text))
    except ValueError as e:
        line, message = e.args
        return [f"line {line}: {message}"]
    pipelines = root.find("pipeline")
    if len(pipelines) != 1 or len(root.children) != 1:
        return [f"want exactly one top-level `pipeline {{ }}` block, found "
                f"{[b.name for b in root.children]}"]
    pipeline = pipelines[0]
    unknown = [b.name for b in pipeline.children if b.name not in PIPELINE_SECTIONS]
    if unknown:
        problems.append(f"line {pipeline.line}: pipeline has unknown sections {unknown}")
    agent_statements = [st for st in pipeline.statements if st and st[0].text == "agent"]
    agent_blocks = pipeline.find("agent")
    if len(agent_statements) + len(agent_blocks) != 1:
        problems.append(f"line {pipeline.line}: pipeline needs exactly one `agent`")
    agent_none = any(len(st) > 1 and st[1].text == "none" for st in agent_statements)
    stages = pipeline.find("stages")
    names = []
    if len(stages) != 1:
        problems.append(f"line {pipeline.line}: pipeline needs exactly one `stages` block")
    else:
        check_stages(stages[0], problems, names, agent_none)
    for name in want_stages:
        if name not in names:
            problems.append(f"no stage '{name}' (stages: {names})")
    commands = {" ".join(c.split()) for c in sh_commands(pipeline)}
    for command in want_commands:
        if " ".join(command.split()) not in commands:
            problems.append(f"no `sh` step runs: {command}")
    return problems


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("jenkinsfile")
    parser.add_argument("--stages", default="", help="comma-separated stage names that must exist")
    parser.add_argument("--commands", help="file of commands (one a line) that sh steps must run")
    args = parser.parse_args()
    with open(args.jenkinsfile, encoding="utf-8") as f:
        text = f.read()
    stages = [s for s in args.stages.split(",") if s]
    commands = []
    if args.commands:
        with open(args.commands, encoding="utf-8") as f:
            commands = [line.strip() for line in f if line.strip()]
    problems = check(text, stages, commands)
    for p in problems:
        print(f"  BAD {args.jenkinsfile}: {p}", file=sys.stderr)
    if not problems:
        print(f"  ok  {args.jenkinsfile} (declarative structure; stages "
              f"{', '.join(stages) or '-'}; {len(commands)} command(s))")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
