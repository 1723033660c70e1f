#!/usr/bin/env node
// A batchinfer client in Node.js, from the .proto files alone (protos/ as they are):
// it validates and submits a job (the job text, the file it extends keyed by the path
// written in `extends`, its input file streamed as input_chunk messages, an idempotency
// key), follows StreamResults to the end from a cursor (re-opening from the last seq on
// UNAVAILABLE), reads the final job, then submits a bad job and decodes the
// google.rpc.Status in grpc-status-details-bin: its BadRequest and JobFileProblems.
//
//   node client.js --gateway HOST:PORT --job JOB.yaml [--input FILE] [--bad BAD.yaml]
//
// Prints one JSON object on stdout: what the test checks.
"use strict";

const fs = require("fs");
const path = require("path");
const crypto = require("crypto");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");
const protobuf = require("protobufjs");

const HERE = __dirname;
const INCLUDE = [path.join(HERE, "..", "..", "protos"), path.join(HERE, "protos")];
const SERVICE_CONFIG = fs.readFileSync(
  path.join(HERE, "..", "..", "gateway", "service_config.json"), "utf8");
const CHUNK = 64 * 1024;
const DEADLINE_MS = 60_000;

function args() {
  const out = {};
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i += 2) out[argv[i].replace(/^--/, "")] = argv[i + 1];
  if (!out.gateway || !out.job) throw new Error("usage: client.js --gateway ADDR --job FILE");
  return out;
}

function loadApi() {
  const definition = protoLoader.loadSync("batchinfer/v1/gateway.proto", {
    includeDirs: INCLUDE, keepCase: true, longs: String, enums: String, defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).batchinfer.v1;
}

// protobufjs for the error details: Status and the messages its Anys hold.
function loadDetails() {
  const root = new protobuf.Root();
  root.resolvePath = (origin, target) => {
    for (const dir of INCLUDE) {
      const candidate = path.join(dir, target);
      if (fs.existsSync(candidate)) return candidate;
    }
    return target; // google/protobuf/*.proto: protobufjs has them built in
  };
  root.loadSync(["google/rpc/status.proto", "google/rpc/error_details.proto",
    "batchinfer/v1/gateway.proto"], { keepCase: true });
  return root;
}

function deadline() {
  return new Date(Date.now() + DEADLINE_MS);
}

// The files a job's `extends` chain names, keyed by the path as written (relative to the
// job file's folder). Here: plain `extends: FILE.yaml` lines only.
function extendsFiles(jobPath, text, files = {}) {
  const found = /^extends:\s*["']?([^"'\s#]+\.ya?ml)/m.exec(text);
  if (found && !(found[1] in files)) {
    const body = fs.readFileSync(path.join(path.dirname(jobPath), found[1]), "utf8");
    files[found[1]] = body;
    extendsFiles(jobPath, body, files);
  }
  return files;
}

function spec(jobPath) {
  const text = fs.readFileSync(jobPath, "utf8");
  return {
    job_yaml: text,
    filename: path.basename(jobPath),
    files: extendsFiles(jobPath, text),
    variables: {},
    idempotency_key: crypto.randomUUID(), // made once per job, reused on a retry
    profile: "",
  };
}

// A client stream: the spec first, then the input file in chunks; resolves with the answer.
function upload(method, first, inputPath) {
  return new Promise((resolve, reject) => {
    const call = method({ deadline: deadline() }, (err, reply) => (err ? reject(err) : resolve(reply)));
    call.write(first);
    if (inputPath) {
      const bytes = fs.readFileSync(inputPath);
      for (let at = 0; at < bytes.length; at += CHUNK) {
        call.write({ input_chunk: bytes.subarray(at, at + CHUNK) });
      }
    }
    call.end();
  });
}

function unary(gateway, name, request) {
  return new Promise((resolve, reject) =>
    gateway[name](request, { deadline: deadline() }, (err, reply) => (err ? reject(err) : resolve(reply))));
}

// Every result once, in completion order; on UNAVAILABLE the stream is opened again from
// the last seq seen (a cursor, not a count: docs/api.md, "Cursors").
async function followResults(gateway, jobId) {
  const results = [];
  let cursor = "0";
  let reopened = 0;
  for (;;) {
    const ended = await new Promise((resolve) => {
      const stream = gateway.StreamResults({ job_id: jobId, after_seq: cursor, no_follow: false });
      stream.on("data", (page) => {
        for (const item of page.results) {
          if (BigInt(item.seq) <= BigInt(cursor)) continue;
          cursor = item.seq;
          const output = item.result.text ? item.result.text.text : null;
          results.push({ seq: item.seq, id: item.task_id, state: item.state, text: output,
            attempts: item.attempts });
        }
      });
      stream.on("end", () => resolve(null));
      stream.on("error", (err) => resolve(err));
    });
    if (ended === null) return { results, reopened };
    if (ended.code !== grpc.status.UNAVAILABLE || reopened >= 20) throw ended;
    reopened += 1;
    await new Promise((r) => setTimeout(r, 200));
  }
}

// The rich error: google.rpc.Status from the grpc-status-details-bin trailer.
function richError(err, details) {
  const raw = err.metadata && err.metadata.get("grpc-status-details-bin")[0];
  if (!raw) return { code: err.code, details: [] };
  const status = details.lookupType("google.rpc.Status").decode(raw);
  const decoded = status.details.map((any) => {
    const typeName = any.type_url.slice(any.type_url.lastIndexOf("/") + 1);
    const type = details.lookupType(typeName);
    return { type: typeName, value: type.toObject(type.decode(any.value), { longs: Number, defaults: true }) };
  });
  return { code: status.code, message: status.message, details: decoded };
}

async function main() {
  const opts = args();
  const api = loadApi();
  const details = loadDetails();
  const gateway = new api.BatchGateway(opts.gateway, grpc.credentials.createInsecure(), {
    "grpc.service_config": SERVICE_CONFIG,
    "grpc.keepalive_time_ms": 30_000,
    "grpc.keepalive_timeout_ms": 10_000,
  });
  const report = {};
  try {
    const job = spec(opts.job);
    const dry = await upload(gateway.ValidateJob.bind(gateway), { spec: job, show_tasks: 2 }, opts.input);
    report.validated = { task_count: Number(dry.task_count), first: dry.tasks.map((t) => t.task.task_id) };

    const submitted = await upload(gateway.SubmitJob.bind(gateway), { spec: job }, opts.input);
    report.job_id = submitted.job.job_id;
    const again = await upload(gateway.SubmitJob.bind(gateway), { spec: job }, opts.input);
    report.same_job_again = again.job.job_id === submitted.job.job_id;

    const followed = await followResults(gateway, report.job_id);
    report.results = followed.results;
    const final = (await unary(gateway, "GetJob", { job_id: report.job_id })).job;
    report.state = final.state;
    report.counts = { total: Number(final.counts.total), succeeded: Number(final.counts.succeeded) };

    if (opts.bad) {
      try {
        await upload(gateway.SubmitJob.bind(gateway), { spec: spec(opts.bad) }, null);
        report.bad = { code: 0 };
      } catch (err) {
        report.bad = richError(err, details);
      }
    }
    try {
      await unary(gateway, "GetJob", { job_id: "no-such-job" });
    } catch (err) {
      report.not_found = err.code === grpc.status.NOT_FOUND;
    }
  } finally {
    gateway.close();
  }
  process.stdout.write(JSON.stringify(report) + "\n");
}

main().catch((err) => {
  process.stderr.write(`error: ${err.stack || err}\n`);
  process.exit(1);
});
