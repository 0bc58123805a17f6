// Small DOM helpers: element building, time formatting, and modal dialogs that keep and give
// back the keyboard focus.

/** `h('button', {class: 'x', onclick: f}, 'text', child)`: an element. */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else if (key === 'class') el.className = value;
    else if (key === 'text') el.textContent = value;
    else el.setAttribute(key, value === true ? '' : value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) {
      el.append(child instanceof Node ? child : String(child));
    }
  }
  return el;
}

let uid = 0;
/** A fresh id for label/field pairs. */
export const newId = (stem) => `${stem}-${++uid}`;

/** A `<time>` in the reader's locale, with the exact instant as its datetime. */
export function when(iso) {
  if (!iso) return '—';
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return iso;
  return h('time', { datetime: iso, title: iso }, date.toLocaleString());
}

/** Says something to screen readers without moving focus. */
export function announce(text) {
  const status = document.getElementById('status');
  status.textContent = '';
  setTimeout(() => {
    status.textContent = text;
  }, 30);
}

/**
 * Opens a modal dialog; resolves with the value of the button that closed it ('' on Escape).
 * A native modal `<dialog>` keeps focus inside it; focus goes back where it was on close.
 */
export function dialog(title, body, buttons) {
  const opener = document.activeElement;
  const titleId = newId('dialog-title');
  const box = h('dialog', { 'aria-labelledby': titleId, class: 'dialog' },
    h('h2', { id: titleId }, title),
    body,
    h('form', { method: 'dialog', class: 'actions' },
      buttons.map(([label, value, cls]) => h('button', { value, class: cls || '' }, label))));
  document.body.append(box);
  return new Promise((resolve) => {
    box.addEventListener('close', () => {
      box.remove();
      if (opener && opener.isConnected && typeof opener.focus === 'function') opener.focus();
      resolve(box.returnValue);
    });
    box.showModal();
    const first = box.querySelector('[autofocus]') || box.querySelector('form.actions button');
    if (first) first.focus();
  });
}

/** Asks before something that cannot be undone. */
export async function confirmAction(title, text, action) {
  const answer = await dialog(title, h('p', {}, text), [['Cancel', 'cancel'], [action, 'ok', 'danger']]);
  return answer === 'ok';
}

/** Shows a secret once, with a copy button. */
export async function showSecret(title, secret) {
  const fieldId = newId('secret');
  const done = h('p', { class: 'hint', 'aria-live': 'polite' });
  const field = h('input', { id: fieldId, readonly: true, class: 'secret', value: secret, spellcheck: 'false' });
  const copy = h('button', {
    type: 'button',
    autofocus: true,
    onclick: async () => {
      field.select();
      try {
        await navigator.clipboard.writeText(secret);
      } catch {
        document.execCommand('copy');
      }
      done.textContent = 'Copied to the clipboard.';
    },
  }, 'Copy secret');
  await dialog(title, [
    h('p', {}, 'This signing secret is shown only now. Store it where your receiver can read it: it verifies the ',
      h('code', {}, 'webhook-signature'), ' header of every delivery.'),
    h('label', { for: fieldId }, 'Signing secret'),
    h('div', { class: 'row' }, field, copy),
    done,
  ], [['I have stored it', 'ok']]);
}
