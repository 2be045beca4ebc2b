// Drives quantledger.v1.QuantizeService from Node.js using only protos/ (and the googleapis
// protos the API imports): create a job, watch it to completion, read its outputs.
//
//   node quantize_client.js ADDRESS SOURCE OUTPUT_DIR PROTO_INCLUDE_DIR...
//
// Prints one JSON object: {"created": ..., "snapshots": N, "final": {...}}; exits 1 on failure.
'use strict';

const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const [address, source, outputDir, ...includeDirs] = process.argv.slice(2);
const repo = path.resolve(__dirname, '..', '..');
const definition = protoLoader.loadSync('quantledger/v1/quantize_service.proto', {
  includeDirs: [path.join(repo, 'protos'), ...includeDirs],
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
});
const api = grpc.loadPackageDefinition(definition).quantledger.v1;
const client = new api.QuantizeService(address, grpc.credentials.createInsecure());

function fail(message) {
  console.error(message);
  process.exit(1);
}

const request = {
  job: { source, quant_types: ['Q4_K_M', 'Q8_0'], options: { output_dir: outputDir } },
  request_id: `node-${Date.now()}`,
};

client.CreateQuantizeJob(request, (error, created) => {
  if (error) fail(`CreateQuantizeJob failed: ${error.code} ${error.details}`);
  let snapshots = 0;
  let last = created;
  const stream = client.WatchQuantizeJob({ name: created.name });
  stream.on('data', (job) => { snapshots += 1; last = job; });
  stream.on('error', (err) => fail(`WatchQuantizeJob failed: ${err.code} ${err.details}`));
  stream.on('end', () => {
    client.GetQuantizeJob({ name: created.name }, (err, final) => {
      if (err) fail(`GetQuantizeJob failed: ${err.code} ${err.details}`);
      console.log(JSON.stringify({ created: created.name, snapshots, last_state: last.state, final }));
      process.exit(final.state === 'STATE_SUCCEEDED' ? 0 : 1);
    });
  });
});
