// The official `openai` npm package as a client of `veil serve`: chat and completion, streaming and not, must
// return exactly the expected greedy text. Started by tests/server/engine_server_test.cpp with:
//   VEIL_BASE_URL   https://127.0.0.1:PORT/v1      (the RA-TLS certificate is trusted via NODE_EXTRA_CA_CERTS)
//   VEIL_API_KEY    an API key
//   VEIL_EXPECT     a JSON file: {model, prompt, max_tokens, completion, messages, chat}
// Prints "OK" and exits 0 when everything matches; prints the first mismatch and exits 1 otherwise.
import { readFileSync } from 'node:fs';
import OpenAI from 'openai';

const expect = JSON.parse(readFileSync(process.env.VEIL_EXPECT, 'utf8'));
const client = new OpenAI({ baseURL: process.env.VEIL_BASE_URL, apiKey: process.env.VEIL_API_KEY, maxRetries: 0,
                            timeout: 60000 });

function check(name, got, want) {
  if (got !== want) {
    console.log(`FAIL ${name}: got ${JSON.stringify(got)}, want ${JSON.stringify(want)}`);
    process.exit(1);
  }
}

const models = await client.models.list();
check('models', models.data.map((m) => m.id).includes(expect.model), true);

const c = await client.completions.create({ model: expect.model, prompt: expect.prompt, max_tokens: expect.max_tokens,
                                            temperature: 0 });
check('completion', c.choices[0].text, expect.completion);
check('completion usage', c.usage.completion_tokens <= expect.max_tokens, true);

let streamed = '';
const cs = await client.completions.create({ model: expect.model, prompt: expect.prompt, max_tokens: expect.max_tokens,
                                             temperature: 0, stream: true });
for await (const chunk of cs) streamed += chunk.choices[0]?.text ?? '';
check('completion stream', streamed, expect.completion);

const chat = await client.chat.completions.create({ model: expect.model, messages: expect.messages,
                                                    max_tokens: expect.max_tokens, temperature: 0 });
check('chat', chat.choices[0].message.content, expect.chat);
check('chat role', chat.choices[0].message.role, 'assistant');

let chatStreamed = '';
const chs = await client.chat.completions.create({ model: expect.model, messages: expect.messages,
                                                   max_tokens: expect.max_tokens, temperature: 0, stream: true,
                                                   stream_options: { include_usage: true } });
let usage = null;
for await (const chunk of chs) {
  chatStreamed += chunk.choices[0]?.delta?.content ?? '';
  if (chunk.usage) usage = chunk.usage;
}
check('chat stream', chatStreamed, expect.chat);
check('chat stream usage', usage !== null && usage.completion_tokens > 0, true);

// A documented error through the SDK: an unknown model is a 404 NotFoundError.
try {
  await client.completions.create({ model: 'no-such-model', prompt: 'x', max_tokens: 1 });
  check('unknown model', 'no error', '404');
} catch (e) {
  check('unknown model status', e.status, 404);
}
console.log('OK');
