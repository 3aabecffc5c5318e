'use strict';
// Sends numbered events with fluent-logger (node) and prints a JSON summary, for tests/interop.
// argv[2]: JSON {tagPrefix, count, labels, eventTime, failFast, timeoutMs, options}; options go to createFluentSender as they
// are, except tlsOptions.caFile, read into tlsOptions.ca. Exit status 0 only if every callback succeeded.
const fs = require('fs');
const logger = require('fluent-logger');

const spec = JSON.parse(process.argv[2]);
const options = Object.assign({}, spec.options);
if (options.tlsOptions && options.tlsOptions.caFile) {
  options.tlsOptions = Object.assign({}, options.tlsOptions, { ca: fs.readFileSync(options.tlsOptions.caFile) });
  delete options.tlsOptions.caFile;
}
// The library logs its handshake steps with console.info: keep stdout for the summary.
options.internalLogger = { info() {}, error(...args) { console.error(...args); } };

const sender = logger.createFluentSender(spec.tagPrefix, options);
const labels = spec.labels || ['a'];
const summary = { emitted: 0, ok: 0, errors: [] };
let pending = spec.count;

const guard = setTimeout(() => {
  summary.errors.push('timed out waiting for callbacks');
  finish(2);
}, spec.timeoutMs || 10000);

let finished = false;
function finish(code) {
  if (finished) return;
  finished = true;
  clearTimeout(guard);
  process.stdout.write(JSON.stringify(summary) + '\n');
  sender.end(null, null, () => process.exit(code));
}

sender.on('error', (err) => {
  summary.errors.push('sender error: ' + String(err));
  if (spec.failFast) finish(1);
});

for (let i = 0; i < spec.count; i++) {
  const label = labels[i % labels.length];
  const record = { seq: i, msg: 'node event ' + i, nested: { list: [1, 'two', null], ok: true } };
  const done = (err) => {
    if (err) summary.errors.push(String(err));
    else summary.ok++;
    if (--pending === 0) finish(summary.errors.length ? 1 : 0);
  };
  summary.emitted++;
  if (spec.eventTime) {
    sender.emit(label, record, new logger.EventTime(1700000000 + i, 123456789), done);
  } else {
    sender.emit(label, record, done);
  }
}
