// Debian's Chromium as the tests run it: headless, no sandbox (CI runs as
// root), and nothing that reaches for the network beyond loopback.
const { chromium } = require('playwright-core');

module.exports = () => chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync'],
});
