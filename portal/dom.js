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

/** A read-only field with a copy button (and its label, hidden where a heading already says it). */
export function copyField(label, value, buttonLabel, { autofocus = false, id = null, hideLabel = false } = {}) {
  const fieldId = id || newId('copy');
  const done = h('span', { class: 'hint', 'aria-live': 'polite' });
  const field = h('input', { id: fieldId, readonly: true, class: 'secret', value, spellcheck: 'false' });
  const copy = h('button', {
    type: 'button',
    autofocus,
    onclick: async () => {
      field.select();
      try {
        await navigator.clipboard.writeText(value);
      } catch {
        document.execCommand('copy');
      }
      done.textContent = 'Copied to the clipboard.';
    },
  }, buttonLabel);
  return h('div', { class: 'copy' },
    h('label', { for: fieldId, class: hideLabel ? 'visually-hidden' : '' }, label),
    h('div', { class: 'row' }, field, copy),
    done);
}
