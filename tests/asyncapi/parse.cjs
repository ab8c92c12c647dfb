// Parse AsyncAPI documents with the official @asyncapi/parser and print what it says
// as JSON: {"<file>": {"parsed": bool, "diagnostics": [{severity, code, message, path}]}}.
// Usage: node parse.cjs PARSER_DIR FILE...   (PARSER_DIR: where npm installed it)
"use strict";
const path = require("path");

async function main() {
  const [dir, ...files] = process.argv.slice(2);
  const { Parser, fromFile } = require(path.join(dir, "node_modules", "@asyncapi", "parser"));
  const parser = new Parser();
  const out = {};
  for (const file of files) {
    const { document, diagnostics } = await fromFile(parser, file).parse();
    out[file] = {
      parsed: document !== undefined,
      // severity: 0 error, 1 warning, 2 information, 3 hint (Spectral's numbering)
      diagnostics: diagnostics.map((d) => ({
        severity: d.severity,
        code: String(d.code),
        message: d.message,
        path: d.path,
      })),
    };
  }
  process.stdout.write(JSON.stringify(out));
}

main().catch((error) => {
  process.stderr.write(String((error && error.stack) || error) + "\n");
  process.exit(1);
});
