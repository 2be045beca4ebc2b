#!/usr/bin/env node
// Reads a file's provenance records from any Ethereum JSON-RPC node with ethers.js alone (no quantledger
// code): node registry_reader.js URL REGISTRY_ADDRESS FILE_SHA256 [ATTESTER] [--min-attesters K]
// Prints one JSON object: the records vouching for the file, how many attesters do, (with ATTESTER)
// that attester's verify() status, and (with --min-attesters) the quorum's verdict: VALID only when K
// distinct attesters hold valid records, each listed as having reproduced (flag bit 32) or originated
// the bytes.
'use strict';
const fs = require('fs');
const path = require('path');
const { ethers } = require('ethers');

const STATUS = ['Unknown', 'Valid', 'Revoked'];
const FLAG_REPRODUCED = 32;

async function main() {
  const args = process.argv.slice(2);
  const quorumAt = args.indexOf('--min-attesters');
  const minAttesters = quorumAt >= 0 ? Number(args.splice(quorumAt, 2)[1]) : 0;
  if (!Number.isInteger(minAttesters) || minAttesters < 0) throw new Error('--min-attesters takes a count');
  const [url, address, sha256, attester] = args;
  if (!url || !address || !/^(0x)?[0-9a-fA-F]{64}$/.test(sha256 || '')) {
    throw new Error('usage: registry_reader.js URL REGISTRY_ADDRESS FILE_SHA256 [ATTESTER]');
  }
  const artifact = JSON.parse(fs.readFileSync(
    path.join(__dirname, '..', '..', 'registry_client', 'artifacts', 'QuantizedModelRegistry.json'), 'utf8'));
  const provider = new ethers.JsonRpcProvider(url, undefined, { staticNetwork: true });
  const registry = new ethers.Contract(address, artifact.abi, provider);
  const digest = sha256.startsWith('0x') ? sha256 : '0x' + sha256;
  const records = (await registry.validRecordsOf(digest)).map((r) => ({
    fileSha256: r.fileDigest.slice(2),
    attester: r.attester,
    sourceDigest: r.sourceDigest.slice(2),
    sourceRevision: /^0x0+$/.test(r.sourceRevision) ? '' : r.sourceRevision.slice(2),
    provenanceSha256: r.provenanceDigest.slice(2),
    quantType: r.quantType,
    toolVersion: r.toolVersion,
    fileType: Number(r.fileType),
    flags: Number(r.flags),
    originalSize: r.originalSize.toString(),
    quantizedSize: r.quantizedSize.toString(),
    attestedAt: Number(r.attestedAt),
  }));
  const out = {
    chainId: (await provider.getNetwork()).chainId.toString(),
    version: await registry.version(),
    attestationCount: Number(await registry.attestationCount(digest)),
    records,
  };
  if (attester) out.status = STATUS[Number(await registry.verify(digest, attester))];
  if (quorumAt >= 0) {
    const vouches = new Map();
    for (const r of [...records].sort((a, b) => a.attestedAt - b.attestedAt)) {
      const key = r.attester.toLowerCase();
      if (!vouches.has(key)) vouches.set(key, { attester: r.attester, reproduced: (r.flags & FLAG_REPRODUCED) !== 0 });
    }
    const enough = vouches.size >= Math.max(minAttesters, 1);
    out.quorum = {
      minAttesters,
      verdict: enough ? 'VALID' : records.length ? 'TOO_FEW_ATTESTERS' : 'UNKNOWN',
      vouches: [...vouches.values()],
    };
  }
  process.stdout.write(JSON.stringify(out) + '\n');
}

main().catch((error) => {
  process.stderr.write(`registry_reader: ${error.shortMessage || error.message}\n`);
  process.exit(1);
});
