// An endpoint's delivery options: how it is signed, in what order it receives, and the
// receiver's own headers (form parts, the answer dialog, and how the endpoint's page shows them).

import { h, newId, dialog, copyField } from './dom.js';

const MAX_HEADERS = 10;

export const SCHEMES = {
  v1: 'HMAC (v1)',
  v1a: 'Ed25519 (v1a)',
  'v1,v1a': 'Both (v1 and v1a)',
};

export const ORDERINGS = { none: 'Concurrent', fifo: 'In order (FIFO)' };

/** A fieldset of radio buttons, each with its one-line explanation. */
function choice(legend, name, options, note) {
  return h('fieldset', {},
    h('legend', {}, legend),
    options.map(([value, hint], i) => {
      const id = newId(name);
      return h('div', { class: 'check' },
        h('input', { type: 'radio', id, name, value, checked: i === 0 }),
        h('label', { for: id }, { ...SCHEMES, ...ORDERINGS }[value], h('span', { class: 'hint' }, ` — ${hint}`)));
    }),
    h('p', { class: 'hint' }, note));
}

/** The create form's choices: signature scheme and ordering (both fixed once created). */
export function createChoices() {
  return [
    choice('Signature', 'scheme', [
      ['v1', 'a shared signing secret, what the Standard Webhooks libraries verify.'],
      ['v1a', 'your receiver verifies with a public key, which cannot sign: a leaked key cannot forge a webhook.'],
      ['v1,v1a', 'every delivery carries both signatures, while your receivers move from one to the other.'],
    ], 'Cannot be changed once the endpoint exists.'),
    choice('Ordering', 'ordering', [
      ['none', 'deliveries run side by side; a failing one does not hold the others back.'],
      ['fifo', 'one at a time, in the order the events happened; a failing delivery holds the later ones back until it succeeds or is given up.'],
    ], 'Cannot be changed once the endpoint exists.'),
  ];
}

/** Name–value rows for the receiver's own headers, at most 10; `read()` gives the object. */
export function headersEditor(legend, note) {
  const rows = h('div', { class: 'header-rows' });
  const count = h('p', { class: 'hint', 'aria-live': 'polite' });
  const add = h('button', { type: 'button', onclick: () => addRow() }, 'Add header');
  function refresh() {
    [...rows.children].forEach((row, i) => {
      for (const span of row.querySelectorAll('.n')) span.textContent = `Header ${i + 1} `;
      row.querySelector('.m').textContent = ` header ${i + 1}`;
    });
    add.disabled = rows.children.length >= MAX_HEADERS;
    count.textContent = add.disabled ? `At most ${MAX_HEADERS} headers.` : '';
  }
  function addRow() {
    const [nameId, valueId] = [newId('header-name'), newId('header-value')];
    const name = h('input', { id: nameId, name: 'header-name', spellcheck: 'false', autocomplete: 'off', placeholder: 'authorization' });
    const row = h('div', { class: 'header-row' },
      h('label', { for: nameId }, h('span', { class: 'n visually-hidden' }), 'Name'),
      name,
      h('label', { for: valueId }, h('span', { class: 'n visually-hidden' }), 'Value'),
      h('input', { id: valueId, name: 'header-value', spellcheck: 'false', autocomplete: 'off' }),
      h('button', {
        type: 'button',
        onclick: () => {
          row.remove();
          refresh();
          add.focus();
        },
      }, 'Remove', h('span', { class: 'm visually-hidden' })));
    rows.append(row);
    refresh();
    name.focus();
  }
  const node = h('fieldset', {}, h('legend', {}, legend), h('p', { class: 'hint' }, note), rows, add, count);
  /** The headers as the API takes them; throws `{text}` for what the API would refuse anyway. */
  function read() {
    const headers = {};
    for (const row of rows.children) {
      const name = row.querySelector('[name="header-name"]').value.trim().toLowerCase();
      const value = row.querySelector('[name="header-value"]').value.trim();
      if (!name && !value) continue;
      if (!name) throw { text: 'Please enter a name for every receiver header.' };
      if (name in headers) throw { text: `Please correct this: the header ${name} is given twice.` };
      headers[name] = value;
    }
    return headers;
  }
  return { node, read, addRow };
}

/** The create and rotate answers: the secret once, the public key, the headers' names. */
export async function showCredentials(title, answer) {
  const parts = [];
  if (answer.secret) {
    parts.push(h('p', {}, 'This signing secret is shown only now. Store it where your receiver can read it: it verifies the ',
      h('code', {}, 'v1'), ' signatures of the ', h('code', {}, 'webhook-signature'), ' header.'),
    copyField('Signing secret', answer.secret, 'Copy secret', { autofocus: true }));
  }
  if (answer.public_key) {
    parts.push(h('p', {}, 'This public key verifies the ', h('code', {}, 'v1a'),
      ' (Ed25519) signatures. It is not secret, cannot sign, and stays on the endpoint\'s page.'),
    copyField('Public key', answer.public_key, 'Copy public key', { autofocus: !answer.secret }));
  }
  const names = Object.keys(answer.headers || {});
  if (names.length) {
    parts.push(h('p', { id: 'created-headers' }, `Sent with every delivery: ${names.join(', ')}. Their values are never shown again.`));
  }
  await dialog(title, parts, [[answer.secret ? 'I have stored it' : 'Done', 'ok']]);
}

/** The endpoint page's rows (`row` gives a term and its value) for these options. */
export function optionFacts(sub, row) {
  return [
    row('Signature', h('span', { id: 'endpoint-scheme' }, SCHEMES[sub.signature_scheme] || sub.signature_scheme)),
    sub.public_key
      ? row('Public key', copyField('Public key', sub.public_key, 'Copy public key', { id: 'public-key', hideLabel: true }))
      : null,
    row('Ordering', h('span', { id: 'endpoint-ordering' }, ORDERINGS[sub.ordering] || sub.ordering)),
    row('Receiver headers', h('span', { id: 'endpoint-headers' },
      sub.header_names.length ? sub.header_names.join(', ') : 'None')),
  ].flat();
}
