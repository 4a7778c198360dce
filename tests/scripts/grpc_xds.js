// gRPC proxyless client (@grpc/grpc-js-xds) for the control-plane e2e tests; same protocol as
// grpc_xds.py (see there): prints {"ports": [P1, P2]}, then runs `spread N`, `until NAME N`
// and `done` commands read one a line, printing {"answers": {name: count}} for each.
'use strict';

const readline = require('node:readline');
const grpc = require('@grpc/grpc-js');
const grpcXds = require('@grpc/grpc-js-xds');

const DEADLINE_MS = 1000 * Number(process.env.OUTRIDER_TEST_DEADLINE_SECS || 10);
const PATH = '/outrider.test.Echo/Who';
const identity = (b) => b;

function server(name) {
  const s = new grpc.Server();
  const definition = {
    Who: {
      path: PATH,
      requestStream: false,
      responseStream: false,
      requestSerialize: identity,
      requestDeserialize: identity,
      responseSerialize: identity,
      responseDeserialize: identity,
    },
  };
  s.addService(definition, { Who: (_call, callback) => callback(null, Buffer.from(name)) });
  return new Promise((resolve, reject) => {
    s.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, port) => {
      if (err) reject(err);
      else resolve({ s, port });
    });
  });
}

function fail(message) {
  process.stderr.write(`${message}\n`, () => process.exit(1));
}

async function main() {
  const target = process.argv[2];
  grpcXds.register();
  const servers = [await server('one'), await server('two')];
  console.log(JSON.stringify({ ports: servers.map((x) => x.port) }));
  // The channel (and its xDS watches) starts with the first command, once the test has
  // applied the policy.
  let client = null;
  const call = () =>
    new Promise((resolve) => {
      const metadata = new grpc.Metadata({ waitForReady: true });
      const deadline = Date.now() + DEADLINE_MS;
      client.makeUnaryRequest(PATH, identity, identity, Buffer.alloc(0), metadata, { deadline }, (err, reply) => {
        if (err) fail(`call failed: ${err.code}: ${err.details}`);
        else resolve(reply.toString());
      });
    });
  const lines = readline.createInterface({ input: process.stdin });
  for await (const line of lines) {
    const words = line.split(/\s+/).filter((w) => w);
    if (words.length === 0 || words[0] === 'done') break;
    if (client === null) client = new grpc.Client(`xds:///${target}`, grpc.credentials.createInsecure());
    const wanted = words[0] === 'spread' ? ['one', 'two'] : [words[1]];
    const end = Date.now() + DEADLINE_MS;
    const seen = new Set();
    while (!wanted.every((w) => seen.has(w))) {
      if (Date.now() > end) return fail(`only ${[...seen]} answered, waiting for ${wanted}`);
      seen.add(await call());
    }
    const answers = {};
    for (let i = 0; i < Number(words[words.length - 1]); i++) {
      const name = await call();
      answers[name] = (answers[name] || 0) + 1;
    }
    console.log(JSON.stringify({ answers }));
  }
  if (client !== null) client.close();
  servers.forEach((x) => x.s.forceShutdown());
  process.exit(0);
}

main().catch((e) => fail(e.stack || String(e)));
