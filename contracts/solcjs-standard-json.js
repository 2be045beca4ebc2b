#!/usr/bin/env node
// Presents the npm `solc` package (solcjs) as a native solc to py-solc-x: it answers `--version` and
// `--standard-json` (input JSON on stdin, output JSON on stdout). Calling `compile()` directly avoids the
// "Cannot retry compilation with SMT" line that the solcjs CLI prints before its JSON.
'use strict';
const path = require('path');

// The project's npm packages live in tests/node; QUANTLEDGER_NODE_MODULES points elsewhere if needed.
module.paths.push(process.env.QUANTLEDGER_NODE_MODULES || path.resolve(__dirname, '..', 'tests', 'node', 'node_modules'));
const solc = require('solc');

const args = process.argv.slice(2);
if (args.includes('--version')) {
  process.stdout.write(`solc, the solidity compiler commandline interface\nVersion: ${solc.version()}\n`);
} else if (args.includes('--standard-json')) {
  const chunks = [];
  process.stdin.on('data', (chunk) => chunks.push(chunk));
  process.stdin.on('end', () => process.stdout.write(solc.compile(Buffer.concat(chunks).toString('utf8'))));
} else {
  process.stderr.write(`unrecognised option '${args[0] || ''}'\n`);
  process.exit(1);
}
